"""Prices: config.yaml first, else litellm's bundled map, else none; integer costs."""

from __future__ import annotations

from typing import Any

from proxy.config import parse_config
from proxy.core.prices import FREE, Prices, max_output_tokens, model_prices


def model(**fields: Any) -> Any:
    config = parse_config(
        {
            "models": [{"name": "m", **fields}],
            "tenants": [{"name": "acme", "api_keys": ["sk-acme-key-1"]}],
        },
        {},
    )
    return config.models[0]


def test_config_prices_win_field_by_field_over_the_map() -> None:
    prices = model_prices(model(litellm_model="openai/gpt-4o-mini", input_cost_per_token=0.000002))
    assert prices == Prices(input=2_000_000, output=600_000, cached_input=75_000)  # the rest: the map
    # A model the map does not list: the cached price defaults to the input price.
    alone = model_prices(model(litellm_model="x/unlisted", input_cost_per_token=0.000002))
    assert alone == Prices(input=2_000_000, output=0, cached_input=2_000_000)
    priced = model_prices(
        model(
            litellm_model="x/y",
            input_cost_per_token=0.000001,
            output_cost_per_token=0.000004,
            cached_input_cost_per_token=0.00000025,
        )
    )
    assert priced == Prices(1_000_000, 4_000_000, 250_000)


def test_the_bundled_map_prices_known_models_with_their_cache_read_price() -> None:
    assert model_prices(model(litellm_model="openai/gpt-4o-mini")) == Prices(150_000, 600_000, 75_000)
    # No cache-read price in the map: cached prompt tokens cost the input price.
    embedding = model_prices(model(litellm_model="openai/text-embedding-3-small"))
    assert embedding == Prices(20_000, 0, 20_000)
    # A config cached price beside map prices.
    mixed = model_prices(model(litellm_model="openai/gpt-4o-mini", cached_input_cost_per_token=0.0000001))
    assert mixed == Prices(150_000, 600_000, 100_000)


def test_unknown_models_have_no_price_and_the_demo_is_free() -> None:
    assert model_prices(model(litellm_model="openai/no-such-model-anywhere")) is None
    assert model_prices(model(litellm_model="demo/echo")) == FREE
    assert model_prices(model(litellm_model="demo/echo", output_cost_per_token=0.000001)) == Prices(
        0, 1_000_000, 0
    )


def test_max_output_tokens_from_config_else_the_map() -> None:
    assert max_output_tokens(model(litellm_model="openai/gpt-4o-mini")) == 16384
    assert max_output_tokens(model(litellm_model="openai/gpt-4o-mini", max_output_tokens=100)) == 100
    assert max_output_tokens(model(litellm_model="x/unlisted")) is None


def test_costs_are_integer_nano_dollars_rounded_up() -> None:
    prices = Prices(150_000, 600_000, 75_000)  # gpt-4o-mini
    assert prices.cost_nano(1000, 100) == 210_000
    assert prices.cost_nano(1000, 100, cached=800) == 150_000
    assert prices.cost_nano(1, 0) == 150  # 0.15 micro-dollars
    assert Prices(1, 0, 1).cost_nano(1, 0) == 1  # a fraction of a nano-dollar rounds up
    assert prices.cost_nano(10, 0, cached=50) == prices.cost_nano(10, 0, cached=10)  # capped at the prompt
    assert prices.cached_saving_usd(1_000_000) == 0.075
