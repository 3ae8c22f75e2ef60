"""Fork safety: each object renews what a forked child must not share with its parent.

A child forked while another thread holds a lock inherits it locked for good, and it shares the
parent's sockets and files. Gunicorn, uWSGI, Celery's prefork pool and ``multiprocessing`` all fork,
so the spool, the pipeline, the client and the counters each register ``os.register_at_fork``
callbacks, as the SDK's ``BatchSpanProcessor`` does. Registration cannot be undone: it holds the
object weakly, so it never keeps it alive, and does nothing once the object is gone.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

__all__ = ["register"]


def register(*, before: Callable[[], None] | None = None, after_in_parent: Callable[[], None] | None = None,
             after_in_child: Callable[[], None] | None = None) -> None:
    """Call these bound methods around every ``os.fork()`` for as long as their object lives."""
    if not hasattr(os, "register_at_fork"):  # Windows: no fork
        return
    os.register_at_fork(**{when: _weakly(method) for when, method in (
        ("before", before), ("after_in_parent", after_in_parent), ("after_in_child", after_in_child))
        if method is not None})


def _weakly(method: Callable[[], None]) -> Callable[[], None]:
    reference = weakref.WeakMethod(method)  # type: ignore[arg-type]

    def call() -> None:
        bound = reference()
        if bound is not None:
            bound()

    return call
