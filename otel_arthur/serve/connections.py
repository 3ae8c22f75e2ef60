"""Bounds on each connection of ``serve``: read deadlines and a cap, over uvicorn's HTTP/1.1 protocol (h11).

uvicorn has neither a header nor a body read timeout (its keep-alive timeout runs only between
requests), so a client that opens a connection and stops, mid-headers or mid-body, holds it and its
file descriptor for ever; with enough of them no new client gets in. ``GuardedH11Protocol`` adds::

    headers   due within header_timeout of the connection opening, or of the first byte of the next
              request on a kept-alive connection
    body      due within body_timeout of the headers (also a body left unread after an answer from the
              headers: uvicorn discards it as it comes, but not for ever)
    cap       a connection beyond max_connections open at once is closed as soon as it is accepted

A missed deadline closes the connection without an answer (the client was still sending; a Collector
retries). Each closure is counted by reason; a log line marks only when the cap starts and stops refusing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["BODY_TIMEOUT", "HEADER_TIMEOUT", "OVER_LIMIT", "ConnectionGuard", "GuardedH11Protocol"]

_logger = logging.getLogger(__name__)

HEADER_TIMEOUT, BODY_TIMEOUT, OVER_LIMIT = "header_timeout", "body_timeout", "max_connections"


@dataclass
class ConnectionGuard:
    """The bounds, and what to call when a connection is closed for one (its reason, for ``/metrics``)."""

    header_timeout: float
    body_timeout: float
    max_connections: int
    on_close: Callable[[str], None]
    refusing: bool = False

    def protocol(self) -> type[GuardedH11Protocol]:
        """The protocol class to give ``uvicorn.Config(http=...)``, bound to this guard."""
        return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": self})

    def admit(self, open_connections: int) -> bool:
        """Called from the event loop only: no lock."""
        if open_connections > self.max_connections:
            if not self.refusing:
                _logger.warning("%d connections open, the limit (--max-connections): closing new ones at once",
                                self.max_connections)
                self.refusing = True
            self.on_close(OVER_LIMIT)
            return False
        if self.refusing:
            _logger.info("Fewer than %d connections open: accepting new ones again", self.max_connections)
            self.refusing = False
        return True


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines and a connection cap (``ConnectionGuard.protocol``)."""

    guard: ConnectionGuard
    _deadline: asyncio.TimerHandle | None = None
    _phase = HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(len(self.connections)):
            transport.close()
            return
        self._arm(HEADER_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm(HEADER_TIMEOUT)  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is h11.SEND_BODY:
            if self._phase == HEADER_TIMEOUT:
                self._arm(BODY_TIMEOUT)
        elif self.conn.their_state is not h11.IDLE:  # the request is in whole (or the connection is done)
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str) -> None:
        self._disarm()
        self._phase = phase
        timeout = self.guard.header_timeout if phase == HEADER_TIMEOUT else self.guard.body_timeout
        self._deadline = self.loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = HEADER_TIMEOUT

    def _expired(self) -> None:
        """The request is late: close; uvicorn tells the app the client is gone (``http.disconnect``)."""
        self._deadline = None
        if not self.transport.is_closing():
            _logger.debug("Closing a connection from %s: %s passed", self.client, self._phase)
            self.guard.on_close(self._phase)
            self.transport.close()
