"""What a model's tokens cost: config.yaml's prices, else the price map bundled with litellm.

Money is counted in integers: a price is held in pico-dollars per token (USD x 10^12,
exact for every price the map lists) and a cost comes out in nano-dollars (USD x 10^9,
rounded up), the unit budgets use inside Lua. `litellm.cost_per_token` would need litellm
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
    """USD per token as integer pico-dollars per token (via the decimal text: 1.5e-07 is
    150000 exactly, not 149999.99...)."""
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

    def cost_nano(self, prompt: int, completion: int, cached: int = 0) -> int:
        """Nano-dollars for an answer's usage, rounded up; `cached` of the prompt tokens at
        the cached price."""
        cached = max(0, min(cached, prompt))
        pico = (prompt - cached) * self.input + cached * self.cached_input + completion * self.output
        return -(-pico // 1000)

    def cost_usd(self, prompt: int, completion: int, cached: int = 0) -> float:
        cached = max(0, min(cached, prompt))
        pico = (prompt - cached) * self.input + cached * self.cached_input + completion * self.output
        return pico / PICO_PER_USD

    def cached_saving_usd(self, cached: int) -> float:
        """What the provider's prompt cache saved on `cached` prompt tokens."""
        return cached * max(0, self.input - self.cached_input) / PICO_PER_USD


FREE = Prices(0, 0, 0)


def model_prices(model: ModelConfig) -> Prices | None:
    """The model's prices, or None when nothing prices it."""
    if model.input_cost_per_token is not None or model.output_cost_per_token is not None:
        return Prices.from_usd(
            model.input_cost_per_token or 0.0,
            model.output_cost_per_token or 0.0,
            model.cached_input_cost_per_token,
        )
    if model.is_demo:
        return FREE
    table = _cost_map()
    name = model.litellm_model
    for candidate in (name, name.split("/", 1)[-1]):
        entry = table.get(candidate)
        if isinstance(entry, dict) and (
            entry.get("input_cost_per_token") is not None or entry.get("output_cost_per_token") is not None
        ):
            cached = model.cached_input_cost_per_token
            if cached is None and entry.get("cache_read_input_token_cost") is not None:
                cached = float(entry["cache_read_input_token_cost"])
            return Prices.from_usd(
                float(entry.get("input_cost_per_token") or 0),
                float(entry.get("output_cost_per_token") or 0),
                cached,
            )
    return None
