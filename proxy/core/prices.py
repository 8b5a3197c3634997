"""What a model's tokens cost: config.yaml's prices, else the price map bundled with litellm.

Money is counted in integers: a price is held in pico-dollars per token (USD x 10^12;
a map price with digits below that, such as 3.0001999999999996e-07, loses them: far less
than a nano-dollar per token) and a cost comes out in nano-dollars (USD x 10^9, rounded
up), the unit budgets use inside Lua. `litellm.cost_per_token` would need litellm
imported (seconds); the JSON file litellm ships is read directly (offline, once).

A model has no price (`model_prices` returns None) when config.yaml sets none and the map
does not list it: money saved counts it as free, and a tenant with a budget cannot use it.
The demo model is free unless config.yaml prices it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import orjson

from proxy.config import ModelConfig
from proxy.core.tokens import litellm_file

_COST_MAP = "model_prices_and_context_window_backup.json"
PICO_PER_USD = 10**12
NANO_PER_USD = 10**9


@cache
def _cost_map() -> dict[str, Any]:
    path = litellm_file(_COST_MAP)
    if path is None:
        return {}
    try:
        data: dict[str, Any] = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data


def _pico(usd_per_token: float) -> int:
    """USD per token as integer pico-dollars per token, via the decimal text (1.5e-07 is
    150000 exactly, not 149999.99...); digits below a pico-dollar are dropped."""
    return int(Decimal(repr(float(usd_per_token))) * PICO_PER_USD)


@dataclass(frozen=True, slots=True)
class Prices:
    """Pico-dollars per token: prompt, completion, and prompt tokens the provider served
    from its own prompt cache."""

    input: int
    output: int
    cached_input: int

    @classmethod
    def from_usd(cls, input_usd: float, output_usd: float, cached_usd: float | None) -> Prices:
        price_in = _pico(input_usd)
        return cls(price_in, _pico(output_usd), price_in if cached_usd is None else _pico(cached_usd))

    def cost_pico(self, prompt: int, completion: int, cached: int = 0) -> int:
        """Pico-dollars for an answer's usage; `cached` of the prompt tokens (at most all of
        them) at the cached price."""
        cached = max(0, min(cached, prompt))
        return (prompt - cached) * self.input + cached * self.cached_input + completion * self.output

    def cost_nano(self, prompt: int, completion: int, cached: int = 0) -> int:
        """Nano-dollars for an answer's usage, rounded up (what budgets count)."""
        return -(-self.cost_pico(prompt, completion, cached) // 1000)

    def cost_usd(self, prompt: int, completion: int, cached: int = 0) -> float:
        return self.cost_pico(prompt, completion, cached) / PICO_PER_USD

    def cached_saving_usd(self, cached: int) -> float:
        """What the provider's prompt cache saved on `cached` prompt tokens."""
        return cached * max(0, self.input - self.cached_input) / PICO_PER_USD


FREE = Prices(0, 0, 0)


def _map_entry(model: ModelConfig) -> dict[str, Any] | None:
    """The bundled map's entry for the model (by litellm name, then without the provider)."""
    table = _cost_map()
    name = model.litellm_model
    for candidate in (name, name.split("/", 1)[-1]):
        entry = table.get(candidate)
        if isinstance(entry, dict):
            return entry
    return None


def _first(*values: Any) -> float | None:
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def model_prices(model: ModelConfig) -> Prices | None:
    """The model's prices, each from config.yaml if set there, else from the bundled map;
    None when neither gives an input or an output price (the demo model is free)."""
    entry = {} if model.is_demo else (_map_entry(model) or {})
    price_in = _first(model.input_cost_per_token, entry.get("input_cost_per_token"))
    price_out = _first(model.output_cost_per_token, entry.get("output_cost_per_token"))
    if price_in is None and price_out is None:
        return FREE if model.is_demo else None
    cached = _first(model.cached_input_cost_per_token, entry.get("cache_read_input_token_cost"))
    return Prices.from_usd(price_in or 0.0, price_out or 0.0, cached)


def max_output_tokens(model: ModelConfig) -> int | None:
    """The most completion tokens one answer of the model can have: config.yaml's
    `max_output_tokens`, else the bundled map's; None when neither says."""
    if model.max_output_tokens is not None:
        return model.max_output_tokens
    value = (_map_entry(model) or {}).get("max_output_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
