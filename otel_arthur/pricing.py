"""The cost of one LLM call in USD, from its model and token counts, with ``genai-prices``' price data.

``cost_usd`` is None whenever the price is not known: no model, a token count missing, a model the
data has no entry for, or an entry without token prices. It is never a guess, and never raises.

``genai-prices`` (pydantic and its bundled price table) takes about 0.45 s to import and load, so it
is imported at the first call that has a model and both token counts, not with otel_arthur: start-up
stays as it was and the one-time load falls on the thread that runs ``export()`` (the span
processor's worker under ``BatchSpanProcessor``). Its model lookup is cached per (provider, model),
misses included (the library caches only hits, and a miss scans every model of the provider); its
calculation (~50 µs) runs once per call, whichever destinations are on. Prices are those in force at
the call's start, so a span maps to the same cost whenever it is mapped.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from functools import lru_cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, Provider

_logger = logging.getLogger(__name__)

MAX_CACHED_MODELS = 1024
"""(provider, model) pairs remembered; spans name a handful, and this bounds what odd spans can fill."""
MAX_CACHED_COSTS = 256
"""Recent calls' costs: with both destinations on, the v3 record and the Engine span of one call share one."""

_library: ModuleType | bool | None = None
"""The ``genai_prices`` module once imported; False when it cannot be (Python 3.10, not installed)."""


def cost_usd(model: Any, provider: Any, input_tokens: Any, output_tokens: Any,
             start_time_ns: int | None = None) -> float | None:
    """The call's cost in USD at the prices of its start time (default: now), or None when it is not known."""
    if not (isinstance(model, str) and model and _is_count(input_tokens) and _is_count(output_tokens)):
        return None
    return _cost(provider if isinstance(provider, str) and provider else None, model, input_tokens, output_tokens,
                 time.time_ns() if start_time_ns is None else start_time_ns)


@lru_cache(maxsize=MAX_CACHED_COSTS)
def _cost(provider: str | None, model: str, input_tokens: int, output_tokens: int, start_time_ns: int) -> float | None:
    try:
        found = _priced_model(provider, model)
        if found is None:
            return None
        provider_info, model_info = found
        at = datetime.fromtimestamp(start_time_ns / 1e9, tz=timezone.utc)
        usage = _genai_prices().Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        return float(model_info.calc_price(usage, provider_info, genai_request_timestamp=at).total_price)
    except Exception:  # price data we did not foresee costs the record its cost, nothing more
        _logger.debug("No cost for model %r of provider %r", model, provider, exc_info=True)
        return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@lru_cache(maxsize=MAX_CACHED_MODELS)
def _priced_model(provider: str | None, model: str) -> tuple[Provider, ModelInfo] | None:
    """The library's provider and model for a model that has token prices; None for any other."""
    library = _genai_prices()
    if library is None:
        return None
    snapshot = library.data_snapshot.get_snapshot()
    try:
        provider_info, model_info = snapshot.find_provider_model(model, None, provider, None)
    except LookupError:
        if provider is None:
            return None
        # A provider the data does not know by that name (a framework's, a gateway's): go by the model.
        try:
            provider_info, model_info = snapshot.find_provider_model(model, None, None, None)
        except LookupError:
            return None
    prices = model_info.prices if isinstance(model_info.prices, list) else [model_info.prices]
    if not any(getattr(price, "input_mtok", None) is not None or getattr(price, "output_mtok", None) is not None
               for price in (getattr(p, "prices", p) for p in prices)):
        return None  # priced per request or per second only: no token price to apply
    return provider_info, model_info


def _genai_prices() -> Any:
    """The ``genai_prices`` module, imported at first use; None when it cannot be."""
    global _library
    if _library is None:
        try:
            import genai_prices
            import genai_prices.data_snapshot  # noqa: F401  (the price table, loaded at first use)
        except ImportError as exc:
            _logger.info("cost_usd is off: genai-prices cannot be imported (%s)", exc)
            _library = False
        else:
            _library = genai_prices
    return _library or None
