"""A serving process made ready before it takes requests: ``serve``'s own, and each decode process.

Two things would otherwise fall on the first requests or on every one:

- the price table (``pricing.load``: ~0.9 s of CPU once per process), which the first bodies with a
  model and token counts paid for: twice the CPU per span over a process's first ~20 requests;
- the garbage collector walking what start-up built (``settle_gc``).
"""

from __future__ import annotations

import gc

from otel_arthur import pricing

__all__ = ["GC_YOUNG_THRESHOLD", "ready_to_serve", "settle_gc"]

# Tracked objects allocated (net) before a young collection: room for a request's spans, records and rows
# (~10 a span, 512-span requests, two at once), which then die before any collection walks them.
GC_YOUNG_THRESHOLD = 20_000


def ready_to_serve(*, maps: bool) -> None:
    """Called once started, before the first request. ``maps``: this process maps spans (and prices them)."""
    if maps:
        pricing.load()  # before the freeze: the table lives as long as the process
    settle_gc()


def settle_gc() -> None:
    """The collector set for serving, once started: serve is its own process, not a host application's.

    What start-up built (modules, the server stacks: ~75k objects) lives as long as the process, so it is
    frozen out of every collection (each full one walked it: ~2 µs per generation span); and a young
    collection waits for ``GC_YOUNG_THRESHOLD`` objects, not 700, so a request's objects are not walked and
    promoted while they are still in use (~1 µs). Collections still run: cycles are freed as before.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
