"""A LangChain chat app instrumented with OpenInference, exporting to Arthur.

It holds the same multi-turn conversation twice, once with plain ``invoke`` calls and once
streaming (``stream_usage=True``), keeping the history (system prompt, each question and each
answer) as a chat app does. It prints, as JSON, one entry per LLM call: the messages it sent
(``messages_to_dict``), what came back over HTTP (reply text, the server's usage, finish reason)
and the ids of the LLM span OpenInference recorded for that call, so the test can match every
Arthur record to its call.
"""

import json

from langchain_core.messages import HumanMessage, SystemMessage, messages_to_dict
from langchain_openai import ChatOpenAI
from openinference.instrumentation.langchain import LangChainInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_arthur import ArthurSpanExporter

SYSTEM = "You are terse."
QUESTIONS = ("What is a span?", "And a trace?", "Thanks, bye.")

provider = TracerProvider(resource=Resource.create())  # service.name from OTEL_SERVICE_NAME
provider.add_span_processor(BatchSpanProcessor(ArthurSpanExporter()))  # ARTHUR_* from the environment
spans = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(spans))
LangChainInstrumentor().instrument(tracer_provider=provider)


def llm_spans():
    return [s for s in spans.get_finished_spans() if s.attributes.get("openinference.span.kind") == "LLM"]


calls = []
for streaming in (False, True):
    llm = ChatOpenAI(model="gpt-4o-mini", temperature=0.1, max_retries=0, streaming=streaming, stream_usage=True)
    history = [SystemMessage(SYSTEM)]
    for question in QUESTIONS:
        history.append(HumanMessage(question))
        sent = messages_to_dict(history)
        seen = len(llm_spans())
        reply = llm.invoke(history, config={"metadata": {"session_id": "oi-session"}})
        history.append(reply)
        new = llm_spans()[seen:]  # SimpleSpanProcessor: the call's span is exported when the call returns
        calls.append({
            "streaming": streaming,
            "messages": sent,
            "reply": reply.content,
            "usage": reply.usage_metadata,
            "finish_reason": reply.response_metadata.get("finish_reason"),
            "spans": [{"trace_id": f"{s.context.trace_id:032x}", "span_id": f"{s.context.span_id:016x}"}
                      for s in new],
        })
provider.shutdown()  # flushes the BatchSpanProcessor: Arthur has every record once this returns
print(json.dumps(calls))
