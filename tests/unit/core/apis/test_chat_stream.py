"""Stream assembly and replay: a replayed stream carries everything the live one did."""

from __future__ import annotations

from typing import Any

import orjson

from proxy.core.apis.chat import ChatAssembler, replay_chunks
from proxy.core.apis.sse import DONE, event

HEAD = {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "gpt"}


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0, **extra: Any) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": index, "delta": delta, "finish_reason": finish, **extra}]}


def assemble(chunks: list[dict[str, Any]]) -> ChatAssembler:
    asm = ChatAssembler()
    for c in chunks:
        asm.add(c)
    return asm


TOOL_STREAM = [
    chunk({"role": "assistant", "content": None}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                }
            ]
        }
    ),
    chunk({}, "tool_calls"),
    {**HEAD, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}},
]


def test_text_stream_assembles_into_a_completion() -> None:
    asm = assemble(
        [chunk({"role": "assistant", "content": "Hel"}), chunk({"content": "lo"}), chunk({}, "stop")]
    )
    assert asm.complete
    response = asm.response()
    assert response["object"] == "chat.completion"
    # The non-stream shape: `refusal` is null when there is none (as a non-stream call says).
    assert response["choices"][0]["message"] == {"role": "assistant", "content": "Hello", "refusal": None}
    assert response["choices"][0]["finish_reason"] == "stop"


def test_tool_call_deltas_are_merged_by_index() -> None:
    response = assemble(TOOL_STREAM).response()
    calls = response["choices"][0]["message"]["tool_calls"]
    assert calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert response["usage"]["total_tokens"] == 13


def test_stream_without_finish_reason_is_incomplete() -> None:
    assert not assemble([chunk({"role": "assistant", "content": "Hel"})]).complete
    assert not ChatAssembler().complete


def test_multiple_choices_and_reasoning_and_refusal() -> None:
    asm = assemble(
        [
            chunk({"role": "assistant", "reasoning_content": "think"}, index=0),
            chunk({"role": "assistant", "refusal": "no"}, index=1),
            chunk({"content": "ok"}, "stop", index=0),
            chunk({}, "stop", index=1),
        ]
    )
    choices = asm.response()["choices"]
    assert choices[0]["message"]["reasoning_content"] == "think"
    assert choices[0]["message"]["content"] == "ok"
    assert choices[1]["message"]["refusal"] == "no"
    assert asm.complete


def test_replay_round_trips_through_the_assembler() -> None:
    original = assemble(TOOL_STREAM).response()
    replayed = assemble(replay_chunks(original, include_usage=True)).response()
    assert replayed == original


def test_replay_hides_usage_unless_asked() -> None:
    original = assemble(TOOL_STREAM).response()
    assert all("usage" not in c for c in replay_chunks(original, include_usage=False))
    assert replay_chunks(original, include_usage=True)[-1]["usage"]["total_tokens"] == 13


def test_logprobs_survive_the_round_trip() -> None:
    lp = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    asm = assemble(
        [chunk({"role": "assistant", "content": "Hi"}, logprobs={"content": lp}), chunk({}, "stop")]
    )
    original = asm.response()
    assert original["choices"][0]["logprobs"] == {"content": lp}
    assert assemble(replay_chunks(original, False)).response() == original


def test_event_framing() -> None:
    assert event({"a": 1}) == b'data: {"a":1}\n\n'
    assert DONE == b"data: [DONE]\n\n"
    assert orjson.loads(event({"x": "é"})[6:-2]) == {"x": "é"}
