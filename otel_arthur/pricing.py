"""The cost of one LLM call in USD, from its model and token counts, with ``genai-prices``' price data.

``cost_usd`` is None whenever the price is not known: no model, a token count missing, a model the
data has no entry for, or an entry without token prices. It is never a guess, and never raises.

``genai-prices`` (pydantic and its bundled price table) takes about 0.45 s to import and load, so it
is imported at the first call that has a model and both token counts, not with otel_arthur: start-up
stays as it was and the one-time load falls on the thread that runs ``export()`` (the span
processor's worker under ``BatchSpanProcessor``). Its model lookup is cached per (provider, model),
misses included (the library caches only hits, and a miss scans every model of the provider). Prices
are those in force at the call's start, so a span maps to the same cost whenever it is mapped; a
model with one price at any time (nearly all) has its costs remembered per counts, whatever the start
(remembered per start, no call of real traffic would meet a cost twice).

The library's own calculation costs ~57 µs a call (unit registry, usage decomposition, validation
on every call). Most prices are linear in the two counts a span carries (a plain price per input
and per output token, perhaps cache prices that apply to counts a span never reports), so for
those the cost is computed here in the library's own ``Decimal`` arithmetic — ``count * price /
per``, summed — which gives the same number; tiered, per-request and other prices go through the
library. ``tests/test_pricing.py`` checks the two agree on every price in the data.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice, Provider

_logger = logging.getLogger(__name__)

MAX_CACHED_MODELS = 1024
"""(provider, model) pairs remembered; spans name a handful, and this bounds what odd spans can fill."""
MAX_CACHED_COSTS = 256
"""Recent calls' costs: with both destinations on, the v3 record and the Engine span of one call share one."""

_TOKEN_PRICES = ("input_mtok", "output_mtok")
_UNREPORTED_PRICES = frozenset({"cache_read_mtok", "cache_write_mtok", "cache_write_5m_mtok", "cache_write_1h_mtok",
                                "web_searches_kcount", "social_searches_kcount", "storage_searches_kcount",
                                "code_executions_kcount"})
"""Prices of counts a span never reports (cache tokens, tool calls): the library prices them at 0, adding nothing."""
_PER_MILLION = Decimal(1_000_000)

_library: ModuleType | bool | None = None
"""The ``genai_prices`` module once imported; False when it cannot be (Python 3.10, not installed)."""


def cost_usd(model: Any, provider: Any, input_tokens: Any, output_tokens: Any,
             start_time_ns: int | None = None) -> float | None:
    """The call's cost in USD at the prices of its start time (default: now), or None when it is not known."""
    if not (isinstance(model, str) and model and _is_count(input_tokens) and _is_count(output_tokens)):
        return None
    provider = provider if isinstance(provider, str) and provider else None
    if _timeless(provider, model):  # one price at any time: the cost of these counts is remembered whatever the start
        return _cost(provider, model, input_tokens, output_tokens, _ANY_TIME_NS)
    return _cost(provider, model, input_tokens, output_tokens,
                 time.time_ns() if start_time_ns is None else start_time_ns)


_ANY_TIME_NS = 0


@lru_cache(maxsize=MAX_CACHED_MODELS)
def _timeless(provider: str | None, model: str) -> bool:
    """Whether the model has one price whatever the time (no price that starts or ends at a date or hour)."""
    try:
        found = _priced_model(provider, model)
    except Exception:  # the cost path says why, once it meets the same
        return False
    return found is not None and not isinstance(found[1].prices, list)


@lru_cache(maxsize=MAX_CACHED_COSTS)
def _cost(provider: str | None, model: str, input_tokens: int, output_tokens: int, start_time_ns: int) -> float | None:
    try:
        found = _priced_model(provider, model)
        if found is None:
            return None
        provider_info, model_info = found
        at = datetime.fromtimestamp(start_time_ns / 1e9, tz=timezone.utc)
        linear = _linear_prices(model_info.get_prices(at))
        if linear is not None:
            return float(linear_cost(linear, input_tokens, output_tokens))
        usage = _genai_prices().Usage(input_tokens=input_tokens, output_tokens=output_tokens)
        return float(model_info.calc_price(usage, provider_info, genai_request_timestamp=at).total_price)
    except Exception:  # price data we did not foresee costs the record its cost, nothing more
        _logger.debug("No cost for model %r of provider %r", model, provider, exc_info=True)
        return None


_linear_cache: dict[int, tuple[ModelPrice, tuple[Decimal, Decimal] | None]] = {}


def _linear_prices(model_price: ModelPrice) -> tuple[Decimal, Decimal] | None:
    """(input, output) USD per million tokens when that is all of the price that applies to a span's
    counts; None for anything else (tiers, per-request or other units). Remembered per price object:
    the price data holds them for the life of the process (the object is kept, so its id stays its own)."""
    cached = _linear_cache.get(id(model_price))
    if cached is None or cached[0] is not model_price:
        if len(_linear_cache) >= MAX_CACHED_MODELS:
            _linear_cache.clear()
        cached = _linear_cache[id(model_price)] = (model_price, _linear(model_price))
    return cached[1]


def _linear(model_price: ModelPrice) -> tuple[Decimal, Decimal] | None:
    prices = {key: value for key, value in vars(model_price).items() if value is not None and not key.startswith("_")}
    if not prices.keys() <= {*_TOKEN_PRICES, *_UNREPORTED_PRICES}:
        return None
    token_prices = [prices.get(key, Decimal(0)) for key in _TOKEN_PRICES]
    if not all(type(price) is Decimal and price.is_finite() and price >= 0 for price in prices.values()):
        return None  # tiered, or a value the library would refuse: its own calculation decides
    return token_prices[0], token_prices[1]


def linear_cost(prices: tuple[Decimal, Decimal], input_tokens: int, output_tokens: int) -> Decimal:
    """The library's arithmetic for a linear price: each count * its price / per, summed (zero terms left out)."""
    return (Decimal(input_tokens) * prices[0] / _PER_MILLION
            + Decimal(output_tokens) * prices[1] / _PER_MILLION)


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


def load() -> bool:
    """Import ``genai-prices`` and load its price table now (~0.9 s of CPU, once per process), not at the first
    span with a model and token counts; whether costs can be computed.

    ``serve`` and its decode processes call it before they take requests, so the first requests cost what
    the others do (the load fell on them: twice the CPU per span over a process's first ~20 requests).
    """
    library = _genai_prices()
    if library is None:
        return False
    library.data_snapshot.get_snapshot()
    return True


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
