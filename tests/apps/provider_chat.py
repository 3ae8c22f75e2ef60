"""A chat app on a provider SDK directly (``openai`` or ``anthropic``), one instrumentor, exporting to Arthur.

``python provider_chat.py INSTRUMENTOR``, INSTRUMENTOR one of :data:`INSTRUMENTORS`. Each instruments
the same SDK methods, so each runs in a process of its own. The app holds the same three-turn
conversation twice, plain and streaming, keeping the history, and prints as JSON one entry per call:
the messages it sent, what came back over HTTP (reply, the server's usage and finish reason, model)
and the ids of the spans the instrumentor recorded during the call.
"""

import json
import sys
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_arthur import ArthurSpanExporter

SYSTEM = "You are terse."
QUESTIONS = ("What is a span?", "And a trace?", "Thanks, bye.")
MAX_TOKENS = 50
TEMPERATURE = 0.1


def _openllmetry_openai() -> Any:
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    return OpenAIInstrumentor()


def _openinference_openai() -> Any:
    from openinference.instrumentation.openai import OpenAIInstrumentor

    return OpenAIInstrumentor()


def _openai_v2() -> Any:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    return OpenAIInstrumentor()


def _openllmetry_anthropic() -> Any:
    from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor

    return AnthropicInstrumentor()


INSTRUMENTORS: dict[str, Callable[[], Any]] = {
    "openllmetry-openai": _openllmetry_openai,
    "openinference-openai": _openinference_openai,
    "openai-v2": _openai_v2,
    "openllmetry-anthropic": _openllmetry_anthropic,
}


def openai_call(client: Any, messages: list[dict[str, Any]], streaming: bool) -> dict[str, Any]:
    """One chat completion; the reply, the server's usage, finish reason and model as they came back."""
    request = {"model": "gpt-4o-mini", "messages": messages, "temperature": TEMPERATURE}
    if not streaming:
        response = client.chat.completions.create(**request)
        usage = response.usage
        return {"reply": response.choices[0].message.content, "finish_reason": response.choices[0].finish_reason,
                "model": response.model, "usage": [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens]}
    reply, call = "", {}
    for chunk in client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}):
        for choice in chunk.choices:
            reply += choice.delta.content or ""
            call["finish_reason"] = choice.finish_reason or call.get("finish_reason")
        if chunk.usage is not None:
            usage = chunk.usage
            call["usage"] = [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens]
        call["model"] = chunk.model
    return {**call, "reply": reply}


def anthropic_call(client: Any, messages: list[dict[str, Any]], streaming: bool) -> dict[str, Any]:
    """One Messages call (``stream()`` when streaming); reply, usage (input, output), stop reason, model."""
    request = {"model": "claude-sonnet-4-5", "system": SYSTEM, "messages": messages, "max_tokens": MAX_TOKENS}
    if streaming:
        with client.messages.stream(**request) as stream:
            message = stream.get_final_message()
    else:
        message = client.messages.create(**request)
    return {"reply": message.content[0].text, "finish_reason": message.stop_reason, "model": message.model,
            "usage": [message.usage.input_tokens, message.usage.output_tokens]}


def main(name: str) -> None:
    provider = TracerProvider(resource=Resource.create())  # service.name from OTEL_SERVICE_NAME
    provider.add_span_processor(BatchSpanProcessor(ArthurSpanExporter()))  # ARTHUR_* from the environment
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    INSTRUMENTORS[name]().instrument(tracer_provider=provider)

    if name.endswith("anthropic"):
        import anthropic

        client, call, system = anthropic.Anthropic(max_retries=0), anthropic_call, []  # ANTHROPIC_BASE_URL
    else:
        import openai

        client, call, system = openai.OpenAI(max_retries=0), openai_call, [{"role": "system", "content": SYSTEM}]
    calls = []
    for streaming in (False, True):
        history = list(system)
        for question in QUESTIONS:
            history.append({"role": "user", "content": question})
            seen = len(spans.get_finished_spans())
            answer = call(client, list(history), streaming)
            history.append({"role": "assistant", "content": answer["reply"]})
            new = spans.get_finished_spans()[seen:]  # SimpleSpanProcessor: exported when the call ends
            calls.append({
                **answer,
                "streaming": streaming,
                "messages": history[:-1],
                "spans": [{"trace_id": f"{s.context.trace_id:032x}", "span_id": f"{s.context.span_id:016x}"}
                          for s in new],
            })
    provider.shutdown()  # flushes the BatchSpanProcessor: Arthur has every record once this returns
    print(json.dumps(calls))


if __name__ == "__main__":
    main(sys.argv[1])
