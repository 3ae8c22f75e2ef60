"""A LangChain app instrumented with OpenLLMetry, exporting every span with the stock OTLP/HTTP exporter.

    python otlp_chat.py QUESTION...

Configured by environment only, as a deployed app would be: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_COMPRESSION``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OPENAI_BASE_URL``. Each question is
one ``ChatOpenAI`` call (the history kept) inside a non-LLM ``handle-turn`` span. At exit the
provider is shut down (the batch is exported) and every finished span is printed as JSON, in the
format of ``tests/spanfixtures.py``, so the test can map them itself and compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.langchain import LangchainInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests directory, for spanfixtures
from spanfixtures import dump_spans  # noqa: E402

provider = TracerProvider(resource=Resource.create({"service.name": "otlp-chat"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
finished = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(finished))
LangchainInstrumentor().instrument(tracer_provider=provider)
tracer = provider.get_tracer("otlp-chat")

llm = ChatOpenAI(model="gpt-4o-mini", temperature=0.1, max_retries=0)
history = []
for question in sys.argv[1:]:
    with tracer.start_as_current_span("handle-turn"):
        history.append(HumanMessage(question))
        history.append(llm.invoke(history))
provider.shutdown()
print(json.dumps(dump_spans(finished.get_finished_spans())))
