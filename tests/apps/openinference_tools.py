"""Tool-calling LangChain apps instrumented with OpenInference, exporting to Arthur.

Two scenarios against the OpenAI-compatible endpoint in ``OPENAI_BASE_URL``: a ``bind_tools`` turn
driven by hand (the model calls ``get_weather``, the tool answers, the model answers again) and a
LangGraph agent (``langchain.agents.create_agent``) doing the same on its own. It prints, as JSON,
``{scenario: {"answer": final text, "llm_spans": [{"trace_id", "span_id"}, …] in start order}}``,
so the test can match Arthur's records to the calls. OpenInference and OpenLLMetry both patch
LangChain as "langchain": this runs in its own process.
"""

import json

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openinference.instrumentation.langchain import LangChainInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_arthur import ArthurSpanExporter

QUESTION = "What is the weather in Paris?"


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny and 21C in {city}"


provider = TracerProvider(resource=Resource.create())  # service.name from OTEL_SERVICE_NAME
provider.add_span_processor(BatchSpanProcessor(ArthurSpanExporter()))  # ARTHUR_* from the environment
spans = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(spans))
LangChainInstrumentor().instrument(tracer_provider=provider)
llm = ChatOpenAI(model="gpt-4o-mini", max_retries=0)


def bind_tools_turn() -> str:
    chat = llm.bind_tools([get_weather])
    messages = [HumanMessage(QUESTION)]
    asked = chat.invoke(messages)
    messages.append(asked)
    messages.extend(get_weather.invoke(call) for call in asked.tool_calls)
    return str(chat.invoke(messages).content)


def agent() -> str:
    state = create_agent(llm, tools=[get_weather]).invoke({"messages": [HumanMessage(QUESTION)]})
    return str(state["messages"][-1].content)


result = {}
for name, scenario in (("bind_tools", bind_tools_turn), ("agent", agent)):
    spans.clear()
    answer = scenario()
    llm_spans = sorted((s for s in spans.get_finished_spans() if s.attributes.get("openinference.span.kind") == "LLM"),
                       key=lambda s: s.start_time)
    result[name] = {"answer": answer, "llm_spans": [
        {"trace_id": f"{s.context.trace_id:032x}", "span_id": f"{s.context.span_id:016x}"} for s in llm_spans]}
provider.shutdown()  # flushes the BatchSpanProcessor: Arthur has every record once this returns
print(json.dumps(result))
