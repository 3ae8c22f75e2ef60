"""The classic Arthur + LangChain chat loop, on OpenTelemetry instead of ArthurCallbackHandler.

A streaming ChatOpenAI prints tokens as they arrive, the history is kept so the conversation can
refer back, and ``q`` quits. No callback handler: LangChain is instrumented with OpenTelemetry and
``ArthurSpanExporter`` turns each LLM call into an Arthur inference, off the chat's thread.

    ARTHUR_ENDPOINT_URL=… ARTHUR_API_KEY=… ARTHUR_MODEL_ID=… OPENAI_API_KEY=… python examples/chat.py

Under ``opentelemetry-instrument`` (zero-code) the tracing set-up below is skipped: the
instrumentation has already installed a tracer provider.
"""

from __future__ import annotations

import os
import sys

from langchain_core.callbacks import StreamingStdOutCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_openai import ChatOpenAI
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_arthur import ArthurSpanExporter


def set_up_tracing() -> TracerProvider | None:
    """Instrument LangChain with OpenLLMetry, exporting to Arthur; None when already set up."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return None
    from opentelemetry.instrumentation.langchain import LangchainInstrumentor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", "chat")}))
    provider.add_span_processor(BatchSpanProcessor(ArthurSpanExporter()))  # arguments fall back to ARTHUR_*
    trace.set_tracer_provider(provider)
    LangchainInstrumentor().instrument(tracer_provider=provider)
    # Said aloud: under opentelemetry-instrument this line means the zero-code set-up did not happen.
    print("chat.py: no OpenTelemetry set-up found; tracing LangChain into Arthur from here", file=sys.stderr)
    return provider


def make_langchain_chat_llm() -> ChatOpenAI:
    return ChatOpenAI(
        streaming=True,
        stream_usage=True,  # streamed calls carry token usage only when asked for
        temperature=0.1,
        callbacks=[StreamingStdOutCallbackHandler()],
    )


def run(llm: BaseChatModel) -> None:
    history: list[BaseMessage] = []
    while True:
        try:
            user_input = input("\n>>> Input >>>\n>>>: ")
        except EOFError:
            break
        if not sys.stdin.isatty():
            print(user_input)  # piped input is not echoed by a terminal: keep the transcript readable
        if user_input.strip() == "q":
            break
        history.append(HumanMessage(content=user_input))
        history.append(llm.invoke(history))
    print()


def main() -> None:
    provider = set_up_tracing()
    try:
        run(make_langchain_chat_llm())
    finally:
        if provider is not None:
            provider.shutdown()  # flushes the last spans to Arthur


if __name__ == "__main__":
    main()
