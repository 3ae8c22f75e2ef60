"""The cost of linear prices, computed here, is the price data's own calculation, for every price in the data."""

import genai_prices
import genai_prices.data_snapshot
import pytest

from otel_arthur import pricing

USAGES = [(0, 1), (29, 8), (1234, 567), (3_000_000, 250_000)]


def _model_prices():
    for provider in genai_prices.data_snapshot.get_snapshot().providers:
        for model in provider.models:
            for price in model.prices if isinstance(model.prices, list) else [model.prices]:
                yield f"{provider.id}/{model.id}", getattr(price, "prices", price)


def test_every_linear_price_costs_what_the_library_calculates():
    linear = 0
    for name, model_price in _model_prices():
        prices = pricing._linear_prices(model_price)
        if prices is None:
            continue
        linear += 1
        for input_tokens, output_tokens in USAGES:
            usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens)
            expected = float(model_price.calc_price(usage)["total_price"])
            assert float(pricing.linear_cost(prices, input_tokens, output_tokens)) == expected, name
    assert linear > 2000  # nearly every price in the data takes the fast path (2640 prices in 0.2.x)


@pytest.mark.parametrize("model_price", [
    genai_prices.types.ModelPrice(input_mtok=genai_prices.types.TieredPrices(
        base=pricing.Decimal(1), tiers=[genai_prices.types.Tier(start=200_000, price=pricing.Decimal(2))])),
    genai_prices.types.ModelPrice(input_mtok=pricing.Decimal(1), requests_kcount=pricing.Decimal(5)),
], ids=["tiered", "per-request"])
def test_prices_that_are_not_linear_go_through_the_library(model_price):
    assert pricing._linear_prices(model_price) is None


def test_costs_are_at_the_prices_in_force_at_the_start_whether_they_change_or_not():
    """A model with one price is costed once per counts whatever the start; one whose price changes, at its start."""
    from datetime import datetime, timezone

    starts = [datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2026, 6, 1, 3, tzinfo=timezone.utc),
              datetime(2027, 1, 1, 15, tzinfo=timezone.utc)]
    usage = genai_prices.Usage(input_tokens=29, output_tokens=8)
    changing = timeless = 0
    for provider in genai_prices.data_snapshot.get_snapshot().providers:
        for model in provider.models:
            found = pricing._priced_model(provider.id, model.id)
            if found is None:
                continue
            provider_info, model_info = found
            costs = [float(model_info.calc_price(usage, provider_info, genai_request_timestamp=at).total_price)
                     for at in starts]
            changing += len(set(costs)) > 1
            timeless += not isinstance(model_info.prices, list)
            for at, expected in zip(starts, costs):
                assert pricing.cost_usd(model.id, provider.id, 29, 8, int(at.timestamp()) * 10**9) == expected, model.id
    assert changing > 10 and timeless > 1000
