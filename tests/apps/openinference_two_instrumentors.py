"""A LangChain chat app with OpenInference's LangChain *and* OpenAI instrumentors on, exporting to Arthur.

Every LLM call then makes two generation spans: LangChain's ``ChatOpenAI`` and the OpenAI SDK's
``ChatCompletion`` (a sibling, not a child: LangChain runs callbacks in a copied context; without an
application span each is the root of its own trace). The conversation runs plain and streaming, once
under an application span per turn and once without. It prints, as JSON, one entry per call: the
reply and the ids of the LLM spans recorded for it, so the test can check one record per call.
"""

import json

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from openinference.instrumentation.langchain import LangChainInstrumentor
from openinference.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_arthur import ArthurSpanExporter

SYSTEM = "You are terse."
QUESTIONS = ("What is a span?", "And a trace?")

provider = TracerProvider(resource=Resource.create())  # service.name from OTEL_SERVICE_NAME
provider.add_span_processor(BatchSpanProcessor(ArthurSpanExporter()))  # OTEL_BSP_* and ARTHUR_* from the environment
spans = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(spans))
LangChainInstrumentor().instrument(tracer_provider=provider)
OpenAIInstrumentor().instrument(tracer_provider=provider)
tracer = provider.get_tracer("app")


def llm_spans():
    return [s for s in spans.get_finished_spans() if s.attributes.get("openinference.span.kind") == "LLM"]


def ask(llm, history):
    if not under_app_span:
        return llm.invoke(history)
    with tracer.start_as_current_span("turn"):
        return llm.invoke(history)


calls = []
for under_app_span in (True, False):
    for streaming in (False, True):
        llm = ChatOpenAI(model="gpt-4o-mini", max_retries=0, streaming=streaming, stream_usage=True)
        history = [SystemMessage(SYSTEM)]
        for question in QUESTIONS:
            history.append(HumanMessage(question))
            seen = len(llm_spans())
            reply = ask(llm, history)
            history.append(reply)
            calls.append({
                "under_app_span": under_app_span,
                "streaming": streaming,
                "reply": reply.content,
                "spans": [{"trace_id": f"{s.context.trace_id:032x}", "span_id": f"{s.context.span_id:016x}",
                           "scope": s.instrumentation_scope.name} for s in llm_spans()[seen:]],
            })
provider.shutdown()  # flushes the BatchSpanProcessor: Arthur has every record once this returns
print(json.dumps(calls))
