"""Legacy completions and the Responses API end to end: `llm-cache-proxy serve` in a
subprocess, the fake provider over real HTTP (model `fake`, through litellm or straight to
its /completions) and the built-in demo model, driven by the official openai SDK."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import openai
import pytest
import redis

from tests.e2e.stack import Stack, start_stack, stop_stack

pytestmark = pytest.mark.e2e
MODELS = ("fake", "demo")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_sync: redis.Redis
) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("e2e-apis"), redis_url)
    yield stack
    stop_stack(stack, redis_sync)


@pytest.mark.parametrize("model", MODELS)
def test_completions_miss_hit_stream_miss_stream_hit(stack: Stack, model: str) -> None:
    client = stack.client()
    prompt = f"complete {uuid.uuid4()}"
    first = client.completions.with_raw_response.create(model=model, prompt=prompt, max_tokens=30)
    second = client.completions.with_raw_response.create(model=model, prompt=prompt, max_tokens=30)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    text = first.parse().choices[0].text
    assert prompt in text and second.parse().choices[0].text == text

    streamed = []
    for expected in ("MISS", "HIT"):
        with client.completions.with_streaming_response.create(
            model=model,
            prompt="stream " + prompt,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            assert response.headers["x-cache"] == expected
            chunks = list(response.parse())
        streamed.append("".join(c.choices[0].text for c in chunks if c.choices))
        assert any(c.usage and c.usage.total_tokens for c in chunks)
    assert streamed[0] == streamed[1] and "stream " + prompt in streamed[0]

    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=model, prompt="x", logprobs=9)
    assert bad.value.body["param"] == "logprobs"  # type: ignore[index]


@pytest.mark.parametrize("model", MODELS)
def test_responses_miss_hit_stream_miss_stream_hit(stack: Stack, model: str) -> None:
    client = stack.client()
    text = f"respond {uuid.uuid4()}"
    first = client.responses.with_raw_response.create(model=model, input=text)
    second = client.responses.with_raw_response.create(model=model, input=text)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.parse().output_text == second.parse().output_text
    assert text in first.parse().output_text

    finals = []
    for expected in ("MISS", "HIT"):
        with client.responses.with_streaming_response.create(
            model=model, input="stream " + text, stream=True
        ) as response:
            assert response.headers["x-cache"] == expected
            events = list(response.parse())
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        finals.append(events[-1].response)  # type: ignore[union-attr]
    assert finals[0].output_text == finals[1].output_text and "stream " + text in finals[0].output_text
    assert finals[1].usage is not None and finals[1].usage.total_tokens > 0
    with client.responses.stream(model=model, input="stream " + text) as helper:
        assert helper.get_final_response().output_text == finals[0].output_text

    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=model, input=[])
    assert bad.value.body["param"] == "input"  # type: ignore[index]


def test_store_true_is_passed_through(stack: Stack) -> None:
    client = stack.client()
    before, text = stack.upstream_calls(), f"keep {uuid.uuid4()}"
    for _ in range(2):
        raw = client.responses.with_raw_response.create(model="fake", input=text, store=True)
        assert raw.headers["x-cache"] == "BYPASS"
    assert stack.upstream_calls() - before == 2
