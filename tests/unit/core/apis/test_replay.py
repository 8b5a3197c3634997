"""Replay (a stored answer as a stream) is generic, and assembling a replay gives back the
stored answer exactly, whatever it holds: audio, annotations, reasoning, tool calls,
logprobs, and fields the proxy has never heard of at every level."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.apis import CHAT, COMPLETIONS
from proxy.core.apis.chat import ChatAssembler, replay_chunks
from proxy.core.apis.completions import TextAssembler

USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
AUDIO = {"id": "audio_1", "data": "UklGRg==", "transcript": "Hi there", "expires_at": 1900000000}
CITE = {
    "type": "url_citation",
    "url_citation": {"url": "https://a.example", "title": "A", "start_index": 0, "end_index": 2},
}
LOGPROB = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}
RICH: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 5,
    "model": "gpt-4o-audio",
    "system_fingerprint": "fp_1",
    "service_tier": "default",
    "x_top": {"deep": [1, None]},
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "audio": AUDIO,
                "annotations": [CITE],
                "reasoning_content": "think",
                "thinking_blocks": [{"type": "thinking", "thinking": "think", "signature": "sig"}],
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
                "x_msg": {"a": [{"b": None}]},
            },
            "logprobs": {"content": [LOGPROB], "refusal": None},
            "finish_reason": "tool_calls",
            "x_choice": "c",
        }
    ],
    "usage": {**USAGE, "x_usage": {"cached": 1}},
}


def chat_round_trip(answer: dict[str, Any], include_usage: bool = True) -> ChatAssembler:
    asm = ChatAssembler()
    for chunk in replay_chunks(answer, include_usage):
        asm.add(chunk)
    return asm


def test_the_opening_chunk_carries_every_non_null_message_field() -> None:
    opening = replay_chunks(RICH, include_usage=False)[0]["choices"][0]
    message = RICH["choices"][0]["message"]
    assert opening["delta"] == {
        "role": "assistant",
        "audio": AUDIO,
        "annotations": [CITE],
        "reasoning_content": "think",
        "thinking_blocks": message["thinking_blocks"],
        "tool_calls": [{**message["tool_calls"][0], "index": 0}],
        "x_msg": {"a": [{"b": None}]},
    }
    assert opening["logprobs"] == RICH["choices"][0]["logprobs"]
    assert opening["finish_reason"] is None


def test_other_choice_fields_come_with_the_finish_chunk() -> None:
    finish = replay_chunks(RICH, include_usage=False)[1]["choices"][0]
    assert finish == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
        "x_choice": "c",
    }


def test_every_chunk_carries_the_top_level_fields_and_usage_only_when_asked() -> None:
    top = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "gpt-4o-audio",
        "system_fingerprint": "fp_1",
        "service_tier": "default",
        "x_top": {"deep": [1, None]},
    }
    for include_usage in (False, True):
        chunks = replay_chunks(RICH, include_usage)
        assert all({k: v for k, v in c.items() if k not in ("choices", "usage")} == top for c in chunks)
        assert [c.get("usage") for c in chunks] == [None, None] + ([RICH["usage"]] if include_usage else [])


def test_a_rich_answer_round_trips() -> None:
    asm = chat_round_trip(RICH)
    assert asm.complete and CHAT.unstorable(asm) is None
    assert asm.response() == RICH
    without_usage = chat_round_trip(RICH, include_usage=False)
    assert CHAT.unstorable(without_usage) == "the stream carried no usage"


def test_legacy_completions_replay_one_chunk_per_choice_with_every_field() -> None:
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 3,
        "model": "davinci",
        "x_top": 1,
        "choices": [
            {"text": "Hi", "index": 0, "logprobs": None, "finish_reason": "stop", "x_c": [1]},
            {"text": "Ho", "index": 1, "logprobs": {"tokens": ["Ho"]}, "finish_reason": "length"},
        ],
        "usage": USAGE,
    }
    chunks = COMPLETIONS.replay_chunks(answer, include_usage=True)
    head = {"id": "cmpl-1", "object": "text_completion", "created": 3, "model": "davinci", "x_top": 1}
    assert chunks == [
        {**head, "choices": [answer["choices"][0]]},
        {**head, "choices": [answer["choices"][1]]},
        {**head, "choices": [], "usage": USAGE},
    ]
    assert len(COMPLETIONS.replay_chunks(answer, include_usage=False)) == 2


# Random answers. Unknown fields are named x_* (so they never take a known field's name);
# their nested keys are anything but `index` (a dict in a list carrying an `index` is how a
# stream marks a list to merge item by item, which a non-stream answer never holds).
keys = st.text("abcdeiprstxy_", min_size=1, max_size=6).filter(lambda k: k != "index") | st.sampled_from(
    ["id", "type", "name", "role", "data", "text", "expires_at"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)
unknown = st.dictionaries(st.text("abc", min_size=1, max_size=3).map(lambda k: f"x_{k}"), values, max_size=3)
unknown_non_null = st.dictionaries(
    st.text("abc", min_size=1, max_size=3).map(lambda k: f"x_{k}"),
    values.filter(lambda v: v is not None),
    max_size=3,
)
texts = st.text(max_size=12)
maybe_text = st.none() | texts
logprob = st.fixed_dictionaries(
    {
        "token": texts,
        "logprob": st.floats(-20, 0),
        "bytes": st.lists(st.integers(0, 255), max_size=3),
        "top_logprobs": st.just([]),
    },
    optional={"x_lp": values},
)
tool_call = st.fixed_dictionaries(
    {
        "id": texts,
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": texts, "arguments": texts}),
    },
    optional={"x_tc": values},
)
optional_message_fields: dict[str, Any] = {
    "audio": st.fixed_dictionaries(
        {
            "id": texts,
            "data": st.text("ABCD+/", max_size=8),
            "transcript": texts,
            "expires_at": st.integers(0, 2**31),
        }
    ),
    "annotations": st.lists(
        st.fixed_dictionaries(
            {
                "type": st.just("url_citation"),
                "url_citation": st.fixed_dictionaries(
                    {
                        "url": texts,
                        "title": texts,
                        "start_index": st.integers(0, 9),
                        "end_index": st.integers(0, 9),
                    }
                ),
            },
        ),
        max_size=2,
    ),
    "reasoning_content": texts,
    "thinking_blocks": st.lists(
        st.fixed_dictionaries(
            {"type": st.just("thinking"), "thinking": texts}, optional={"signature": texts}
        ),
        max_size=2,
    ),
    "tool_calls": st.lists(tool_call, max_size=3),
    "function_call": st.fixed_dictionaries({"name": texts, "arguments": texts}),
}


@st.composite
def chat_answers(draw: st.DrawFn) -> dict[str, Any]:
    choices = []
    for index in range(draw(st.integers(1, 3))):
        message = {
            "role": "assistant",
            "content": draw(maybe_text),
            "refusal": draw(maybe_text),
            **draw(st.fixed_dictionaries({}, optional=optional_message_fields)),
            **draw(unknown_non_null),
        }
        logprobs = draw(
            st.none()
            | st.fixed_dictionaries(
                {
                    "content": st.none() | st.lists(logprob, max_size=3),
                    "refusal": st.none() | st.lists(logprob, max_size=2),
                }
            )
        )
        finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish,
                **draw(unknown),
            }
        )
    top = draw(
        st.fixed_dictionaries({}, optional={"system_fingerprint": maybe_text, "service_tier": maybe_text})
    )
    usage = {**USAGE, **draw(unknown)}
    return {
        "id": draw(texts),
        "object": "chat.completion",
        "created": draw(st.integers(0, 2**31)),
        "model": draw(texts),
        **top,
        **draw(unknown),
        "choices": choices,
        "usage": usage,
    }


@st.composite
def completion_answers(draw: st.DrawFn) -> dict[str, Any]:
    legacy_logprobs = st.fixed_dictionaries(
        {
            "tokens": st.lists(texts, max_size=3),
            "token_logprobs": st.lists(st.none() | st.floats(-20, 0), max_size=3),
            "top_logprobs": st.none()
            | st.lists(st.dictionaries(texts, st.floats(-20, 0), max_size=2), max_size=3),
            "text_offset": st.lists(st.integers(0, 99), max_size=3),
        }
    )
    choices = [
        {
            "text": draw(texts),
            "index": index,
            "logprobs": draw(st.none() | legacy_logprobs),
            "finish_reason": draw(st.sampled_from(["stop", "length"])),
            **draw(unknown),
        }
        for index in range(draw(st.integers(1, 3)))
    ]
    return {
        "id": draw(texts),
        "object": "text_completion",
        "created": draw(st.integers(0, 2**31)),
        "model": draw(texts),
        **draw(unknown),
        "choices": choices,
        "usage": {**USAGE, **draw(unknown)},
    }


@settings(max_examples=300)
@given(chat_answers())
def test_assembling_a_chat_replay_gives_back_the_answer(answer: dict[str, Any]) -> None:
    asm = chat_round_trip(answer)
    assert asm.complete
    assert asm.response() == answer
    # Stored unless a message says nothing at all (a stream that lost what it said).
    says_something = all(
        any(v not in (None, "", [], {}) for k, v in c["message"].items() if k != "role")
        for c in answer["choices"]
    )
    assert (CHAT.unstorable(asm) is None) == says_something


@settings(max_examples=300)
@given(completion_answers())
def test_assembling_a_completions_replay_gives_back_the_answer(answer: dict[str, Any]) -> None:
    asm = TextAssembler()
    for chunk in COMPLETIONS.replay_chunks(answer, include_usage=True):
        asm.add(chunk)
    assert asm.complete and COMPLETIONS.unstorable(asm) is None
    assert asm.response() == answer
