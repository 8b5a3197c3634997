"""The generic stream merge, rule by rule: what a streamed answer becomes once stored, and
which streams are too ambiguous to store."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.apis import CHAT, COMPLETIONS
from proxy.core.apis.chat import ChatAssembler
from proxy.core.apis.completions import TextAssembler
from proxy.core.apis.merge import DeltaMerge, joined

HEAD = {"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "gpt"}
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0, **choice: Any) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": index, "delta": delta, "finish_reason": finish, **choice}]}


def folded(*deltas: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    merge, acc = DeltaMerge(), {}
    for delta in deltas:
        merge.fold(acc, delta, ("message",))
    return joined(acc), merge.doubt


def assembled(chunks: list[dict[str, Any]]) -> ChatAssembler:
    asm = ChatAssembler()
    for c in chunks:
        asm.add(c)
    return asm


def message_of(*deltas: dict[str, Any]) -> dict[str, Any]:
    asm = assembled([*(chunk(d) for d in deltas), chunk({}, "stop")])
    assert asm.doubt is None
    message: dict[str, Any] = asm.response()["choices"][0]["message"]
    return message


def test_strings_concatenate() -> None:
    assert folded({"content": "Hel"}, {"content": ""}, {"content": "lo"}) == ({"content": "Hello"}, None)
    assert folded({"x_note": "a"}, {"x_note": "b"})[0] == {"x_note": "ab"}  # unknown fields alike


@pytest.mark.parametrize("field", ["id", "type", "role", "object", "index", "name", "call_id"])
def test_identity_fields_keep_their_one_value(field: str) -> None:
    assert folded({field: "v"}, {field: "v"}, {field: None}) == ({field: "v"}, None)


def test_an_identity_field_that_changes_is_ambiguous() -> None:
    acc, doubt = folded({"audio": {"id": "a1"}}, {"audio": {"id": "a2"}})
    assert acc == {"audio": {"id": "a2"}}
    assert doubt == "message.audio.id changed from 'a1' to 'a2'"


def test_dicts_merge_recursively() -> None:
    audio, doubt = folded(
        {"audio": {"id": "audio_1", "transcript": "Hi", "data": None, "expires_at": None}},
        {"audio": {"id": None, "data": "AAAA", "expires_at": 1700000000, "transcript": " there"}},
    )
    assert doubt is None
    assert audio == {
        "audio": {"id": "audio_1", "transcript": "Hi there", "data": "AAAA", "expires_at": 1700000000}
    }


def test_indexed_lists_merge_item_by_item_in_first_seen_order() -> None:
    acc, doubt = folded(
        {
            "tool_calls": [
                {"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x"'}}]},
        {"tool_calls": [{"index": 1, "type": "function", "function": {"arguments": "{}"}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
    )
    assert doubt is None
    assert acc["tool_calls"] == [
        {"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        {"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x": 1}'}},
    ]


def test_one_chunk_may_carry_two_fragments_of_one_index() -> None:
    acc, _ = folded(
        {
            "tool_calls": [
                {"index": 0, "id": "a", "function": {"arguments": "{"}},
                {"index": 0, "function": {"arguments": "}"}},
            ]
        }
    )
    assert acc["tool_calls"] == [{"index": 0, "id": "a", "function": {"arguments": "{}"}}]


def test_tool_calls_lose_the_stream_index_in_the_answer_unknown_indexed_lists_keep_it() -> None:
    message = message_of(
        {
            "tool_calls": [
                {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]
        },
        {"x_parts": [{"index": 0, "text": "p"}]},
        {"x_parts": [{"index": 0, "text": "q"}]},
    )
    assert message["tool_calls"] == [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert message["x_parts"] == [{"index": 0, "text": "pq"}]


def test_other_lists_concatenate() -> None:
    acc, doubt = folded(
        {"x_tokens": [1, 2]}, {"x_tokens": [3]}, {"x_items": [{"a": 1}]}, {"x_items": [{"a": 2}]}
    )
    assert doubt is None
    assert acc == {"x_tokens": [1, 2, 3], "x_items": [{"a": 1}, {"a": 2}]}


def test_numbers_and_bools_take_the_last_non_null_value_and_null_never_overwrites() -> None:
    acc, doubt = folded(
        {"x_n": 1, "x_b": True}, {"x_n": 2, "x_b": False}, {"x_n": None, "x_b": None, "x_none": None}
    )
    assert (acc, doubt) == ({"x_n": 2, "x_b": False, "x_none": None}, None)


def test_a_value_that_changes_type_is_ambiguous() -> None:
    assert folded({"content": "a"}, {"content": [{"type": "text", "text": "b"}]})[1] == (
        "message.content changed type (str to list)"
    )
    assert folded({"x": {"a": 1}}, {"x": 2})[1] == "message.x changed type (dict to int)"


def test_a_list_mixing_indexed_and_plain_items_is_ambiguous() -> None:
    assert (
        folded({"x": [{"index": 0, "a": "b"}, {"a": "c"}]})[1]
        == "message.x mixes items with and without an index"
    )


def test_typed_parts_split_over_chunks_are_ambiguous() -> None:
    """litellm sends thinking blocks as partial blocks per chunk: concatenating gives
    several blocks where the non-stream answer has one."""
    asm = assembled(
        [
            chunk(
                {
                    "role": "assistant",
                    "thinking_blocks": [{"type": "thinking", "thinking": "a", "signature": "s"}],
                }
            ),
            chunk({"thinking_blocks": [{"type": "thinking", "thinking": "b"}]}),
            chunk({"content": "ok"}, "stop"),
            {**HEAD, "choices": [], "usage": USAGE},
        ]
    )
    assert asm.complete
    assert (
        asm.doubt
        == "choices[0].message.thinking_blocks is a list of typed parts that came in more than one piece"
    )
    assert CHAT.unstorable(asm) == asm.doubt


def test_typed_parts_in_one_piece_are_kept_as_they_are() -> None:
    cite = {
        "type": "url_citation",
        "url_citation": {"url": "https://a", "title": "A", "start_index": 0, "end_index": 2},
    }
    message = message_of({"content": "Hi"}, {"annotations": [cite, {**cite, "x_more": [1]}]})
    assert message["annotations"] == [cite, {**cite, "x_more": [1]}]


def test_base64_padded_before_its_last_piece_is_ambiguous() -> None:
    assert folded({"audio": {"data": "AAAA"}}, {"audio": {"data": "BBB="}})[1] is None
    assert folded({"audio": {"data": "AA=="}}, {"audio": {"data": "BBBB"}})[1] == (
        "message.audio.data is base64 that was padded before its last piece"
    )


def test_top_level_fields_take_their_last_non_null_value() -> None:
    asm = assembled(
        [
            {
                **HEAD,
                "system_fingerprint": None,
                "service_tier": "default",
                "x_top": {"a": 1},
                "obfuscation": "q",
                "usage": None,
                "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
            },
            {
                **HEAD,
                "created": 8,
                "system_fingerprint": "fp_1",
                "service_tier": None,
                "obfuscation": "zz",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            },
            {**HEAD, "created": None, "choices": [], "usage": USAGE},
        ]
    )
    answer = asm.response()
    assert {k: v for k, v in answer.items() if k != "choices"} == {
        "id": "c1",
        "object": "chat.completion",
        "created": 8,
        "model": "gpt",
        "system_fingerprint": "fp_1",
        "service_tier": "default",
        "x_top": {"a": 1},
        "usage": USAGE,
    }  # no `obfuscation`: OpenAI's per-chunk padding is not part of the answer


def test_choice_level_fields_merge_into_the_choice() -> None:
    lp = {"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}
    asm = assembled(
        [
            chunk(
                {"role": "assistant", "content": "a"},
                logprobs={"content": [lp], "refusal": None},
                x_choice="p",
            ),
            chunk({"content": "b"}, logprobs={"content": [{**lp, "token": "b"}]}, x_choice="q", x_stop=None),
            chunk({}, "length", x_stop=42),
            chunk({}, None),
        ]
    )
    choice = asm.response()["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "ab", "refusal": None},
        "logprobs": {"content": [lp, {**lp, "token": "b"}], "refusal": None},
        "finish_reason": "length",
        "x_choice": "pq",
        "x_stop": 42,
    }


def test_the_answer_has_the_non_stream_shape() -> None:
    asm = assembled(
        [
            chunk(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "t",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                }
            ),
            chunk({}, "tool_calls"),
        ]
    )
    assert asm.response()["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]


def test_a_choice_sent_whole_instead_of_as_a_delta_is_ambiguous() -> None:
    asm = assembled(
        [{**HEAD, "choices": [{"index": 0, "message": {"content": "a"}, "finish_reason": "stop"}]}]
    )
    assert asm.doubt == "choices[0].message came whole in a chunk, not as a delta"


def test_a_message_that_says_nothing_is_not_stored() -> None:
    """litellm's stream drops a refusal streamed on its own: what is left is empty."""
    asm = assembled(
        [
            chunk({"role": "assistant", "content": "", "refusal": ""}),
            chunk({}, "stop"),
            {**HEAD, "choices": [], "usage": USAGE},
        ]
    )
    assert asm.complete
    assert CHAT.unstorable(asm) == "choices[0].message is empty"


def test_a_stream_without_usage_is_not_stored() -> None:
    asm = assembled([chunk({"role": "assistant", "content": "a"}), chunk({}, "stop")])
    assert asm.complete and asm.doubt is None
    assert CHAT.unstorable(asm) == "the stream carried no usage"
    asm.add({**HEAD, "choices": [], "usage": USAGE})
    assert CHAT.unstorable(asm) is None


def test_legacy_completions_merge_the_same_way() -> None:
    head = {"id": "cmpl-1", "object": "text_completion", "created": 3, "model": "davinci"}
    asm = TextAssembler()
    for c in (
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "text": "Hel",
                    "logprobs": {
                        "tokens": ["Hel"],
                        "token_logprobs": [-0.1],
                        "top_logprobs": [{"Hel": -0.1}],
                        "text_offset": [0],
                    },
                    "finish_reason": None,
                    "x_c": "u",
                }
            ],
        },
        {
            **head,
            "x_top": 1,
            "choices": [
                {
                    "index": 0,
                    "text": "lo",
                    "logprobs": {
                        "tokens": ["lo"],
                        "token_logprobs": [-0.2],
                        "top_logprobs": [{"lo": -0.2}],
                        "text_offset": [3],
                    },
                    "finish_reason": "stop",
                }
            ],
        },
    ):
        asm.add(c)
    assert asm.complete and asm.doubt is None
    assert asm.response() == {
        **head,
        "x_top": 1,
        "choices": [
            {
                "text": "Hello",
                "index": 0,
                "logprobs": {
                    "tokens": ["Hel", "lo"],
                    "token_logprobs": [-0.1, -0.2],
                    "top_logprobs": [{"Hel": -0.1}, {"lo": -0.2}],
                    "text_offset": [0, 3],
                },
                "finish_reason": "stop",
                "x_c": "u",
            }
        ],
    }
    assert COMPLETIONS.unstorable(asm) == "the stream carried no usage"


def test_expires_at_is_the_earliest_anywhere_in_the_answer() -> None:
    answer = {
        "choices": [
            {"message": {"audio": {"id": "a", "expires_at": 2000}}},
            {"message": {"audio": {"id": "b", "expires_at": 1500}, "x": [{"expires_at": 1800}]}},
        ],
        "x_flag": {"expires_at": True},  # not a time
    }
    assert CHAT.expires_at(answer) == 1500
    assert COMPLETIONS.expires_at({"choices": [{"text": "a"}]}) is None


def test_reading_the_answer_mid_stream_changes_nothing() -> None:
    asm = ChatAssembler()
    asm.add(chunk({"role": "assistant", "content": "Hel", "audio": {"id": "a", "data": "AAAA"}}))
    asm.add(chunk({"content": "l", "audio": {"data": "BBBB"}}))
    assert asm.text() == "Hel" + "l"  # ids and base64 data are not text
    assert asm.response()["choices"][0]["message"]["audio"] == {"id": "a", "data": "AAAABBBB"}
    asm.add(chunk({"content": "o", "audio": {"data": "CC=="}}, "stop"))
    message = asm.response()["choices"][0]["message"]
    assert (message["content"], message["audio"]["data"], asm.doubt) == ("Hello", "AAAABBBBCC==", None)
