"""One v3 record per LLM call when two instrumentors trace it (a framework's span and its provider SDK's).

What the spans of one call look like (measured: OpenInference's LangChain 0.1.80 or OpenLLMetry's
LangChain 0.62.4, each beside OpenInference's OpenAI 0.1.66): the provider's span is *not* a child
of the framework's. LangChain runs its callbacks in a copied context, so the provider's span is a
sibling under the application's span or, with none, the root of a trace of its own. Its time lies
inside the framework span's, and both hold the same messages and the same answer. So:

**Rule.** A generation span is not recorded when a record already made in this process has the same
call: same service, prompt and completion (a completion is needed: without content nothing is
merged), made by another instrumentor (instrumentation scope), its parent, child or sibling (or
both roots of their traces), one span's time inside the other's; each record stands for at most one
such span. Whichever span arrives first is recorded, so the order of arrival (the in-app exporter
usually gets the provider's span first, ``serve`` may get either) changes which span is kept, never
how many records there are.

**No call is lost.** A span is left out only for a record that was already spooled with the same
prompt and completion, and each record covers one span of another instrumentor: with every call
seen by the same instrumentors, records >= calls (records + covered = spans, covered <= records).
What is forgotten (past ``WINDOW`` or ``MAX_REMEMBERED``, or in another process) or decided at the
same moment on another thread is recorded twice: a duplicate, never a loss. The one case that merges
two calls: identical prompt and completion, one traced only by a framework and the other only by a
provider SDK, one inside the other in time, under the same parent; the record then holds exactly
what both said.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from otel_arthur import forking
from otel_arthur.fields import COMPLETION, PROMPT
from otel_arthur.mapping import InferenceRecord, SpanOrigin
from otel_arthur.spool import Encoded

__all__ = ["MAX_REMEMBERED", "ONE_SOURCE_REMEMBERED", "WINDOW", "Call", "CallMemory", "Choice", "call_of"]

WINDOW = 300.0  # seconds a record can cover a later span: past the Collector's retries of one request
MAX_REMEMBERED = 16_384  # spans remembered at most (~500 bytes each): beyond, the oldest are forgotten
ONE_SOURCE_REMEMBERED = 256
"""Spans remembered while one instrumentation scope alone has made generation spans: none can cover
another then, so only enough to pair the first calls of a second instrumentor when it appears (the
two spans of a call arrive within an export batch or two); an app traced once holds no more."""
MAX_SCOPES = 64  # instrumentation scopes counted; two are what matters


@dataclass(slots=True, eq=False)  # one per span: compared by identity
class _Seen:
    """A generation span decided on: recorded (and whether it already covers a span), or covered."""

    trace_id: str
    span_id: str
    origin: SpanOrigin
    call: bytes | None  # digest of service, prompt and completion; None when there is no completion
    recorded: bool
    at: float
    seq: int  # order of decision: of several spans that could cover one, the first decided does
    covers: str | None = None  # the partner_inference_id of the span this record stands for


@dataclass
class Choice:
    """A batch decided on: ``records`` to store, ``duplicates`` left out; ``taken()`` once stored."""

    records: list[InferenceRecord]
    duplicates: int
    _decided: list[_Seen] = field(default_factory=list, repr=False)
    _covering: list[tuple[_Seen, str]] = field(default_factory=list, repr=False)  # (record, span it stands for)
    stored: bool = False

    def taken(self) -> None:
        self.stored = True


class Call(NamedTuple):
    """What is compared of a record: where its span sits, and the digest of its service, prompt and completion."""

    trace_id: str
    span_id: str
    origin: SpanOrigin
    digest: bytes | None  # None when there is no completion


def call_of(record: InferenceRecord) -> Call | None:
    """What ``CallMemory`` compares of a record, None for one not from ``map_span`` (a spooled record read back).
    Worked out where the record is mapped: a decode process hands it back with the record ``Encoded``."""
    trace_id, span_id = record.fields.get("trace_id"), record.fields.get("span_id")
    if record.origin is None or not isinstance(trace_id, str) or not isinstance(span_id, str):
        return None
    return Call(trace_id, span_id, record.origin, _call_digest(record))


def _call_digest(record: InferenceRecord) -> bytes | None:
    completion = record.fields.get(COMPLETION)
    if not isinstance(completion, str) or not completion:
        return None
    key = [record.fields.get("service_name"), record.fields.get(PROMPT), completion]
    try:
        text = orjson.dumps(key)  # half the standard library's cost; the digest never leaves the process
    except orjson.JSONEncodeError:  # what orjson refuses (a lone surrogate) the standard library writes
        text = json.dumps(key).encode("utf-8", "replace")
    return hashlib.blake2b(text, digest_size=16).digest()


def _related(a: _Seen, b: _Seen) -> bool:
    """Parent and child, siblings, or both roots (the provider's span in a trace of its own)."""
    a_parent, b_parent = a.origin.parent_span_id, b.origin.parent_span_id
    if a_parent is None and b_parent is None:
        return True
    if a.trace_id != b.trace_id:
        return False
    return a_parent == b_parent or _hex(a_parent) == b.span_id or _hex(b_parent) == a.span_id


def _nested(a: SpanOrigin, b: SpanOrigin) -> bool:
    return (b.start_ns <= a.start_ns and a.end_ns <= b.end_ns) or (a.start_ns <= b.start_ns and b.end_ns <= a.end_ns)


def _hex(span_id: int | None) -> str | None:
    return None if span_id is None else f"{span_id:016x}"


class CallMemory:
    """The recent generation spans of this process, to leave out a second span of one call; thread-safe."""

    def __init__(self, window: float = WINDOW, max_remembered: int = MAX_REMEMBERED,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._max = max_remembered
        self._clock = clock
        self._lock = threading.Lock()
        self._spans: OrderedDict[str, _Seen] = OrderedDict()  # by partner_inference_id, oldest first
        # Recorded spans that cover none yet, by call digest and scope: only another scope's can cover a
        # span, so many identical calls of one instrumentor are never scanned one by one.
        self._calls: dict[bytes, dict[object, list[_Seen]]] = {}
        self._order = itertools.count()
        self._scopes: set[object] = set()  # instrumentation scopes seen making generation spans
        forking.register(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """A fresh lock: a parent's thread may have held it, choosing, at the fork (the memory stays: same calls)."""
        self._lock = threading.Lock()

    @contextmanager
    def choosing(self, records: Sequence[InferenceRecord]) -> Iterator[Choice]:
        """Decide, store (the caller, inside the block) and remember as one step, so no two threads
        let one record stand for two spans. Nothing is remembered unless ``Choice.taken()`` was called."""
        with self._lock:
            choice = self._choose(records)
            yield choice
            if choice.stored:
                self._remember(choice._decided, choice._covering)

    def _choose(self, records: Sequence[InferenceRecord]) -> Choice:
        now = self._clock()
        self._forget(now)
        kept: list[InferenceRecord] = []
        decided: list[_Seen] = []
        covering: list[tuple[_Seen, str]] = []
        batch: dict[bytes, dict[object, list[_Seen]]] = {}  # recorded earlier in this batch: they cover later spans too
        busy: set[int] = set()  # chosen to cover a span of this batch
        for record in records:
            identity = record.identity if type(record) is Encoded else record.partner_inference_id
            seen = self._spans.get(identity)
            if seen is not None:  # sent again (a retried request): the same decision as before
                if seen.recorded:
                    kept.append(record)
                continue
            span = self._seen(record, now, next(self._order))
            if span is None:
                kept.append(record)
                continue
            cover = None
            if span.call is not None:
                cover = (self._cover(span, self._calls.get(span.call), busy)
                         or self._cover(span, batch.get(span.call), busy))  # remembered ones were decided first
            if cover is not None:
                covering.append((cover, identity))
                busy.add(id(cover))
                span.recorded = False
            else:
                kept.append(record)
                if span.call is not None:
                    batch.setdefault(span.call, {}).setdefault(span.origin.scope, []).append(span)
            decided.append(span)
        return Choice(kept, len(records) - len(kept), decided, covering)

    @staticmethod
    def _seen(record: InferenceRecord | Encoded, now: float, seq: int) -> _Seen | None:
        call = record.call if type(record) is Encoded else call_of(record)
        return None if call is None else _Seen(*call, True, now, seq)

    @staticmethod
    def _cover(span: _Seen, by_scope: dict[object, list[_Seen]] | None, busy: set[int]) -> _Seen | None:
        """The first decided of the spans of another scope that can stand for ``span``, if any."""
        found: _Seen | None = None
        for scope, candidates in (by_scope or {}).items():
            if scope == span.origin.scope:
                continue
            for candidate in candidates:  # in order of decision
                if found is not None and candidate.seq > found.seq:
                    break
                if id(candidate) not in busy and _related(span, candidate) and _nested(span.origin, candidate.origin):
                    found = candidate
                    break
        return found

    def _remember(self, decided: list[_Seen], covering: list[tuple[_Seen, str]]) -> None:
        for record, covered in covering:
            if record.call is not None and self._spans.get(f"{record.trace_id}-{record.span_id}") is record:
                self._unindex(record)  # remembered from an earlier batch: it can cover no other span
            record.covers = covered
        for span in decided:
            identity = f"{span.trace_id}-{span.span_id}"
            self._spans[identity] = span
            if span.recorded and span.call is not None and span.covers is None:
                self._calls.setdefault(span.call, {}).setdefault(span.origin.scope, []).append(span)
            if len(self._scopes) < MAX_SCOPES:
                self._scopes.add(span.origin.scope)
        limit = self._max if len(self._scopes) > 1 else min(self._max, ONE_SOURCE_REMEMBERED)
        while len(self._spans) > limit:
            self._drop_oldest()

    def _forget(self, now: float) -> None:
        while self._spans and now - next(iter(self._spans.values())).at > self._window:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, span = self._spans.popitem(last=False)
        if span.recorded and span.call is not None and span.covers is None:
            self._unindex(span)

    def _unindex(self, span: _Seen) -> None:
        assert span.call is not None
        by_scope = self._calls[span.call]
        same = by_scope[span.origin.scope]
        same.remove(span)
        if not same:
            del by_scope[span.origin.scope]
            if not by_scope:
                del self._calls[span.call]

    def __len__(self) -> int:
        with self._lock:
            return len(self._spans)
