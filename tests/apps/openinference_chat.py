"""A LangChain app instrumented with OpenInference, exporting to Arthur; prints its LLM span ids as JSON."""

import json

from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from openinference.instrumentation.langchain import LangChainInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_arthur import ArthurSpanExporter

provider = TracerProvider(resource=Resource.create())
provider.add_span_processor(BatchSpanProcessor(ArthurSpanExporter()))
spans = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(spans))
LangChainInstrumentor().instrument(tracer_provider=provider)

llm = ChatOpenAI(max_retries=0, streaming=True, stream_usage=True)
for question in ("first", "second"):
    llm.invoke([HumanMessage(question)], config={"metadata": {"session_id": "oi-session"}})
provider.shutdown()
print(json.dumps([f"{s.context.span_id:016x}" for s in spans.get_finished_spans()
                  if s.attributes.get("openinference.span.kind") == "LLM"]))
