"""The fields one generation record carries, and the Arthur attribute each one lands in by default.

This table is the contract between the mapper (which produces these keys), the binding (which finds
each key's attribute on the Arthur model) and ``create-model`` (which onboards a model holding all
of them). Names follow the seed's ``ArthurCallbackHandler`` where it had one
(``prompt_tokens``, ``completion_tokens``, ``duration``, ``finish_reason``).
"""

from __future__ import annotations

from typing import NamedTuple


class Stage:
    """Arthur attribute stages (``arthurai.common.constants.Stage``)."""

    PIPELINE_INPUT = "PIPELINE_INPUT"
    PREDICTED_VALUE = "PREDICTED_VALUE"
    NON_INPUT_DATA = "NON_INPUT_DATA"


class ValueType:
    """Arthur attribute value types (``arthurai.common.constants.ValueType``) that records use."""

    STRING = "STRING"
    INTEGER = "INTEGER"
    FLOAT = "FLOAT"
    BOOLEAN = "BOOLEAN"
    TIMESTAMP = "TIMESTAMP"
    UNSTRUCTURED_TEXT = "UNSTRUCTURED_TEXT"


class Field(NamedTuple):
    stage: str
    value_type: str
    doc: str


PROMPT = "prompt"
COMPLETION = "completion"
TRUNCATED = "truncated"
COST_USD = "cost_usd"

FIELDS: dict[str, Field] = {
    PROMPT: Field(Stage.PIPELINE_INPUT, ValueType.UNSTRUCTURED_TEXT, "chat history as 'System: …\\nHuman: …'"),
    COMPLETION: Field(Stage.PREDICTED_VALUE, ValueType.UNSTRUCTURED_TEXT, "the model's reply"),
    "model": Field(Stage.NON_INPUT_DATA, ValueType.STRING, "response model, else request model"),
    "provider": Field(Stage.NON_INPUT_DATA, ValueType.STRING, "e.g. openai"),
    "prompt_tokens": Field(Stage.NON_INPUT_DATA, ValueType.INTEGER, "input tokens reported by the provider"),
    "completion_tokens": Field(Stage.NON_INPUT_DATA, ValueType.INTEGER, "output tokens reported by the provider"),
    "total_tokens": Field(Stage.NON_INPUT_DATA, ValueType.INTEGER, "total tokens reported by the provider"),
    COST_USD: Field(Stage.NON_INPUT_DATA, ValueType.FLOAT,
                    "USD at genai-prices' price of the model for these token counts; absent when unpriced"),
    "duration": Field(Stage.NON_INPUT_DATA, ValueType.FLOAT, "span end - start, in seconds"),
    "finish_reason": Field(Stage.NON_INPUT_DATA, ValueType.STRING, "e.g. stop, length"),
    "temperature": Field(Stage.NON_INPUT_DATA, ValueType.FLOAT, "requested sampling temperature"),
    "trace_id": Field(Stage.NON_INPUT_DATA, ValueType.STRING, "W3C trace id, 32 hex digits"),
    "span_id": Field(Stage.NON_INPUT_DATA, ValueType.STRING, "span id, 16 hex digits"),
    "session_id": Field(Stage.NON_INPUT_DATA, ValueType.STRING, "conversation / session id from span metadata"),
    "user_id": Field(Stage.NON_INPUT_DATA, ValueType.STRING, "end user id from span metadata"),
    "service_name": Field(Stage.NON_INPUT_DATA, ValueType.STRING, "resource service.name"),
    "error": Field(Stage.NON_INPUT_DATA, ValueType.STRING, "status description of a failed call"),
    TRUNCATED: Field(Stage.NON_INPUT_DATA, ValueType.BOOLEAN, "true when a text field was cut to size"),
}
