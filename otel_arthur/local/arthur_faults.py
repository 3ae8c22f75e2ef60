"""Faults the local stand-ins inject on purpose, so delivery can be proven against a misbehaving Arthur.

Shared by the local Arthur (v3 API) and the local Arthur Engine; "record" means an inference row of
the one and a span of the other. Set at start (``create_app(faults=…)``, ``otel-arthur local-arthur
--fault-…``, ``otel-arthur local-engine --fault-…``) and at run time:
``GET /_local/faults`` answers the faults in force and how many of each were injected;
``POST /_local/faults`` replaces them with a JSON object of ``Faults`` fields (missing fields take
their defaults, so ``{}`` switches every fault off) and restarts the draws from its ``seed``.

Every API request (never ``/_local``) draws one number: below ``rate_429`` it is answered
429 with ``Retry-After``, then come 408, 500, 503, a dropped connection (the response headers go
out and the connection closes before the body: the client sees a broken connection), a slow answer
(handled at once, answered ``slow_seconds`` late: a client with a shorter timeout gives up on a
request that was stored, as with a real Arthur busy behind its load balancer) and a stall (no answer
for ``stall_seconds``, then the dropped connection: a client with a shorter timeout sees its request
time out). Each row of an inferences request then draws again: a per-record 400 or 500 inside the
207, the row not stored; each span of an Engine trace request likewise: either draw rejects the span
inside the 206 (422 when none is left). Only a slow request reaches the store, so only a client that
gives up on a slow answer and sends again can create a duplicate. With a ``seed`` the draws repeat
exactly, run after run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DROP = "drop"
SLOW = "slow"
STALL = "stall"
FAULT_SCOPE_KEY = "local_arthur.fault"
_DROP_LOG = "ASGI callable returned without completing response."


def _rate(doc: str) -> Any:
    return field(default=0.0, metadata={"help": doc, "rate": True})


@dataclass(frozen=True)
class Faults:
    """What to inject. Request rates are exclusive shares of all requests and add up to at most 1."""

    rate_429: float = _rate("share of requests answered 429 Too Many Requests, with Retry-After")
    rate_408: float = _rate("share of requests answered 408 Request Timeout")
    rate_500: float = _rate("share of requests answered 500")
    rate_503: float = _rate("share of requests answered 503")
    rate_drop: float = _rate("share of requests whose connection is closed before the response body")
    rate_slow: float = _rate("share of requests handled normally but answered slow_seconds late")
    slow_seconds: float = field(default=0.5, metadata={"help": "delay of a slow answer, seconds"})
    rate_stall: float = _rate("share of requests never answered: held stall_seconds, then the connection closed")
    stall_seconds: float = field(default=15.0, metadata={"help": "how long a stalled request is held, seconds"})
    retry_after: int = field(default=1, metadata={"help": "Retry-After of a 429, whole seconds"})
    rate_record_400: float = _rate("share of records rejected: an inference row's 400 inside the 207, a span"
                                   " rejected inside the Engine's 206")
    rate_record_500: float = _rate("share of records failed: an inference row's 500 inside the 207, a span"
                                   " rejected inside the Engine's 206")
    seed: int | None = field(default=None, metadata={"help": "seed of the draws: the same faults, run after run"})

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.metadata.get("rate") and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise ValueError(f"{spec.name} must be a number between 0 and 1, got {value!r}")
        if sum(self.request_shares().values()) > 1:
            raise ValueError(" + ".join(f"rate_{name}" for name in self.request_shares()) + " must not exceed 1")
        if self.rate_record_400 + self.rate_record_500 > 1:
            raise ValueError("rate_record_400 + rate_record_500 must not exceed 1")
        for name in ("slow_seconds", "stall_seconds"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.retry_after, int) or self.retry_after < 0:
            raise ValueError(f"retry_after must be whole seconds >= 0, got {self.retry_after!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def request_shares(self) -> dict[str, float]:
        """Request fault -> its share of requests, in the order the draw tests them."""
        return {"429": self.rate_429, "408": self.rate_408, "500": self.rate_500, "503": self.rate_503,
                DROP: self.rate_drop, SLOW: self.rate_slow, STALL: self.rate_stall}

    @classmethod
    def from_json(cls, body: object) -> Faults:
        """From a ``POST /_local/faults`` body; ``ValueError`` naming what is wrong."""
        if not isinstance(body, dict):
            raise ValueError("faults must be a JSON object")
        unknown = sorted(set(body) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown faults {unknown}")
        return cls(**body)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FaultInjector:
    """The faults in force and their seeded draws; thread-safe (the CLI or a test may change them mid-run)."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._lock = threading.Lock()
        self.set(faults or Faults())

    def set(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults
            self._rng = random.Random(faults.seed)
            self.injected: Counter[str] = Counter()

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"faults": self.faults.to_json(), "injected": dict(self.injected)}

    def _draw(self, shares: dict[str, float]) -> str | None:
        if not any(shares.values()):
            return None  # no draw: switching faults on later does not shift what a seed produces
        with self._lock:
            point, floor = self._rng.random(), 0.0
            for name, share in shares.items():
                floor += share
                if point < floor:
                    self.injected[name] += 1
                    return name
        return None

    def request_fault(self) -> str | None:
        """``"429"``, ``"408"``, ``"500"``, ``"503"``, ``DROP``, ``SLOW``, ``STALL`` or None for this request."""
        return self._draw(self.faults.request_shares())

    def record_fault(self) -> int | None:
        """400, 500 or None for this record (inference row or span)."""
        fault = self._draw({"record_400": self.faults.rate_record_400, "record_500": self.faults.rate_record_500})
        return None if fault is None else int(fault.removeprefix("record_"))

    def record_faults(self, count: int) -> list[int | None] | None:
        """``record_fault()`` for each of ``count`` records in order, or None (no draws) when record faults are off."""
        faults = self.faults
        if not (faults.rate_record_400 or faults.rate_record_500):
            return None
        return [self.record_fault() for _ in range(count)]


class _HideDeliberateDrops(logging.Filter):
    """uvicorn logs each unfinished response as an error; a stand-in leaves one unfinished only to drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _DROP_LOG


_HIDE_DROPS = _HideDeliberateDrops()


class InjectFaults:
    """ASGI middleware answering the request-level faults before the request reaches the API's handlers.

    Only paths under ``prefix`` (one or a tuple) are faulted; an error answer carries its message under
    ``error_key``, where the API puts its own (the v3 API's ``message``, the Engine's ``detail``).
    """

    def __init__(self, app: ASGIApp, injector: FaultInjector, prefix: str | tuple[str, ...],
                 error_key: str = "message") -> None:
        self.app = app
        self.injector = injector
        self.prefix = prefix
        self.error_key = error_key
        logging.getLogger("uvicorn.error").addFilter(_HIDE_DROPS)  # idempotent: the same filter object

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        faultable = scope["type"] == "http" and scope["path"].startswith(self.prefix)
        fault = self.injector.request_fault() if faultable else None
        if fault is not None:
            scope[FAULT_SCOPE_KEY] = fault  # answered before routing: the request counts file it under the fault
        if fault == STALL:
            await asyncio.sleep(self.injector.faults.stall_seconds)
        if fault in (DROP, STALL):
            # Headers promising a body, then nothing: uvicorn closes the connection mid-response.
            await send({"type": "http.response.start", "status": 502, "headers": [(b"content-length", b"1")]})
            return
        if fault == SLOW:
            await self.app(scope, receive, _late(send, self.injector.faults.slow_seconds))
            return
        if fault is not None:
            headers = {"Retry-After": str(self.injector.faults.retry_after)} if fault == "429" else None
            response = JSONResponse({self.error_key: f"fault injected: {fault}"}, status_code=int(fault),
                                    headers=headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _late(send: Send, delay: float) -> Send:
    """``send`` holding the response back ``delay`` seconds: the request is handled (stored) first."""

    async def send_late(message: Message) -> None:
        if message["type"] == "http.response.start":
            await asyncio.sleep(delay)
        await send(message)

    return send_late


async def _get_faults(request: Request) -> Response:
    return JSONResponse(request.app.state.faults.describe())


async def _post_faults(request: Request) -> Response:
    try:
        faults = Faults.from_json(json.loads(await request.body()))
    except (TypeError, ValueError) as exc:  # malformed JSON too
        raise HTTPException(400, str(exc)) from None
    request.app.state.faults.set(faults)
    return JSONResponse(request.app.state.faults.describe())


def routes(local_prefix: str) -> list[Route]:
    """``GET`` and ``POST {local_prefix}/faults`` over the app's ``app.state.faults`` injector."""
    return [Route(f"{local_prefix}/faults", _get_faults, methods=["GET"]),
            Route(f"{local_prefix}/faults", _post_faults, methods=["POST"])]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--fault-rate-429`` … ``--fault-seed``: one flag per ``Faults`` field."""
    group = parser.add_argument_group("fault injection (also at run time: GET/POST /_local/faults)")
    for spec in dataclasses.fields(Faults):
        kind = float if spec.type == "float" else int  # annotations are strings here: "float", "int", "int | None"
        group.add_argument(f"--fault-{spec.name.replace('_', '-')}", dest=f"fault_{spec.name}", type=kind,
                           default=spec.default, help=f"{spec.metadata['help']} (default: %(default)s)")


def from_arguments(args: argparse.Namespace) -> Faults:
    return Faults(**{spec.name: getattr(args, f"fault_{spec.name}") for spec in dataclasses.fields(Faults)})
