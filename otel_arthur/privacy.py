"""What of a record may leave the process: content switches, redaction, size caps — applied in one place.

``RecordFilter`` is what ``Pipeline.submit`` runs on each record before it is spooled, so the
exporter and ``serve`` share it and nothing unfiltered ever reaches the spool file or Arthur::

    record ─▶ content switch (prompt / completion withheld) ─▶ redaction ─▶ size caps ─▶ spool

Content switches. ``ARTHUR_SEND_CONTENT=false`` withholds prompt and completion on our side; the
record keeps its metrics (tokens, duration, model, finish reason, errors). Left unset, the
instrumentors' own switches are honoured when *this* process's environment turns content off,
even if a span still carries it (e.g. one instrumentor ignoring another's switch):

    TRACELOOP_TRACE_CONTENT=false                              prompt and completion (OpenLLMetry)
    OPENINFERENCE_HIDE_INPUTS / _INPUT_MESSAGES / _INPUT_TEXT / _PROMPTS = true      the prompt
    OPENINFERENCE_HIDE_OUTPUTS / _OUTPUT_MESSAGES / _OUTPUT_TEXT / _CHOICES = true   the completion
    OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=false (or no_content)          both (GenAI)

Only an explicit "off" counts: the GenAI switch defaults to off in the specification, yet
OpenLLMetry records its ``gen_ai.*`` messages under its own switch, so an unset variable says
nothing. ``ARTHUR_SEND_CONTENT=true`` overrides them all (e.g. for ``serve``, whose environment is
not the application's).

Arthur requires the model's input (and prediction) attribute in every inference, so a record
without content is still sent: a withheld text becomes ``CONTENT_WITHHELD`` here, and a text the
span never carried becomes ``CONTENT_NOT_CAPTURED`` when the record is bound to the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from otel_arthur.fields import COMPLETION, PROMPT
from otel_arthur.mapping import InferenceRecord, cut_text, limit_text
from otel_arthur.messages import clean_text
from otel_arthur.redaction import Redactor

if TYPE_CHECKING:
    from otel_arthur.config import ArthurSettings, EngineSettings

CONTENT_WITHHELD = "[content withheld]"
"""Prompt or completion dropped on our side (``ARTHUR_SEND_CONTENT=false`` or an instrumentor's switch here)."""
CONTENT_NOT_CAPTURED = "[content not captured]"
"""The span carried no prompt or completion (the instrumentor's content switch was off, or the call failed first)."""

# The instrumentors' switches, as they name them.
TRACELOOP_TRACE_CONTENT = "TRACELOOP_TRACE_CONTENT"
OPENINFERENCE_HIDE_INPUTS = (
    "OPENINFERENCE_HIDE_INPUTS",
    "OPENINFERENCE_HIDE_INPUT_MESSAGES",
    "OPENINFERENCE_HIDE_INPUT_TEXT",
    "OPENINFERENCE_HIDE_PROMPTS",
)
OPENINFERENCE_HIDE_OUTPUTS = (
    "OPENINFERENCE_HIDE_OUTPUTS",
    "OPENINFERENCE_HIDE_OUTPUT_MESSAGES",
    "OPENINFERENCE_HIDE_OUTPUT_TEXT",
    "OPENINFERENCE_HIDE_CHOICES",
)
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

_ON = {"1", "true", "t", "yes", "y", "on"}
_OFF = {"0", "false", "f", "no", "n", "off", "no_content"}
_NEVER_REDACTED = frozenset({"trace_id", "span_id"})  # hex ids we made; a digit run in one could pass Luhn


def _explicitly(name: str, values: set[str]) -> bool:
    return (os.environ.get(name) or "").strip().lower() in values


@dataclass(frozen=True)
class ContentPolicy:
    """Which texts leave the process, and which setting decided it (for ``doctor``)."""

    send_prompt: bool = True
    send_completion: bool = True
    reason: str = "default"

    @classmethod
    def resolve(cls, send_content: bool | None) -> ContentPolicy:
        """``send_content`` (argument or ``ARTHUR_SEND_CONTENT``) decides when set; else the instrumentors' switches."""
        if send_content is not None:
            return cls(send_content, send_content, "ARTHUR_SEND_CONTENT")
        if _explicitly(TRACELOOP_TRACE_CONTENT, _OFF):
            return cls(False, False, TRACELOOP_TRACE_CONTENT)
        if _explicitly(OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT, _OFF):
            return cls(False, False, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)
        hide_in = [name for name in OPENINFERENCE_HIDE_INPUTS if _explicitly(name, _ON)]
        hide_out = [name for name in OPENINFERENCE_HIDE_OUTPUTS if _explicitly(name, _ON)]
        if hide_in or hide_out:
            return cls(not hide_in, not hide_out, ", ".join(hide_in + hide_out))
        return cls()

    @property
    def sends_everything(self) -> bool:
        return self.send_prompt and self.send_completion


class RecordFilter:
    """``record -> record``: content switch, then redaction, then size caps (so a marker never gets cut)."""

    def __init__(self, content: ContentPolicy, redactor: Redactor | None, max_text_bytes: int) -> None:
        self.content = content
        self.redactor = redactor
        self.max_text_bytes = max_text_bytes
        self._withheld = {name: CONTENT_WITHHELD for name, sent in
                          ((PROMPT, content.send_prompt), (COMPLETION, content.send_completion)) if not sent}

    @classmethod
    def from_settings(cls, settings: ArthurSettings | EngineSettings, redact: Callable[[str], str] | None = None) -> RecordFilter:
        """Redaction from ``redact_builtins``, ``redact_patterns`` and the hook; none at all when all three are off."""
        redactor = None
        if settings.redact_builtins or settings.redact_patterns or redact is not None:
            redactor = Redactor(settings.redact_builtins, settings.redact_patterns, redact)
        return cls(ContentPolicy.resolve(settings.send_content), redactor, settings.max_text_bytes)

    def __call__(self, record: InferenceRecord) -> InferenceRecord:
        if self._withheld:
            record = replace(record, fields={**record.fields, **self._withheld})
        if self.redactor is not None:
            record = replace(record, fields={
                name: self.redactor(value) if isinstance(value, str) and name not in _NEVER_REDACTED
                and value != CONTENT_WITHHELD else value
                for name, value in record.fields.items()
            })
        return limit_text(record, self.max_text_bytes)

    def text_hook(self, *, output: bool) -> Callable[[str], str | None]:
        """The same switch, redaction and size cap for one text of a span translated to OpenInference.

        ``output`` picks the switch: completion (output messages, output value) or prompt (the rest).
        The hook returns None for a withheld text: the translation then leaves that attribute out.
        """
        if not (self.content.send_completion if output else self.content.send_prompt):
            return _withhold
        return self.scrub

    def scrub(self, text: str) -> str:
        """One text as it may leave: lone surrogates replaced, redacted, cut to ``max_text_bytes``."""
        if self.redactor is None and len(text) <= self.max_text_bytes and text.isascii():
            return text  # nearly every text: nothing to replace, redact or cut (ASCII: one byte a character)
        text = clean_text(text)
        return cut_text(text if self.redactor is None else self.redactor(text), self.max_text_bytes)


def _withhold(text: str) -> None:
    return None
