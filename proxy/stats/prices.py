"""Per-token prices: the cost map bundled with litellm, read as plain JSON.

`litellm.cost_per_token` would need litellm imported (seconds); `llm-cache-proxy stats`
must start fast, so the JSON file litellm ships is read directly. A model can also set its
own prices in config.yaml (`input_cost_per_token`, `output_cost_per_token`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from proxy.config import ModelConfig
from proxy.core.tokens import litellm_file

_COST_MAP = "model_prices_and_context_window_backup.json"


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


def token_prices(model: ModelConfig) -> tuple[float, float]:
    """(input, output) USD per token; (0, 0) for models with no known price (e.g. demo)."""
    if model.input_cost_per_token is not None or model.output_cost_per_token is not None:
        return model.input_cost_per_token or 0.0, model.output_cost_per_token or 0.0
    if model.is_demo:
        return 0.0, 0.0
    table = _cost_map()
    name = model.litellm_model
    for candidate in (name, name.split("/", 1)[-1]):
        entry = table.get(candidate)
        if isinstance(entry, dict):
            return float(entry.get("input_cost_per_token") or 0), float(
                entry.get("output_cost_per_token") or 0
            )
    return 0.0, 0.0


def cost_usd(model: ModelConfig, prompt_tokens: int, completion_tokens: int) -> float:
    price_in, price_out = token_prices(model)
    return prompt_tokens * price_in + completion_tokens * price_out
