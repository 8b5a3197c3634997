"""The diff a replay miss shows: JSON paths, both values cut short, ranked candidates."""

from __future__ import annotations

from proxy.core.request_diff import ABSENT, Change, diff, distance, render


def test_paths_of_changed_added_and_removed_values() -> None:
    recorded = {"messages": [{"role": "user", "content": "a"}], "n": 2, "response_format": {"type": "text"}}
    asked = {
        "messages": [{"role": "user", "content": "b"}, {"role": "user", "content": "c"}],
        "temperature": 0.2,
        "response_format": {"type": "json_object"},
    }
    assert diff(recorded, asked) == [
        Change("messages[0].content", "a", "b"),
        Change("messages[1]", ABSENT, {"role": "user", "content": "c"}),
        Change("n", 2, ABSENT),
        Change("response_format.type", "text", "json_object"),
        Change("temperature", ABSENT, 0.2),
    ]


def test_equal_requests_have_no_diff_and_types_count() -> None:
    assert diff({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}) == []
    assert diff({"a": 1}, {"a": True}) == [Change("a", 1, True)]
    assert diff({"a": 1}, {"a": 1.5}) == [Change("a", 1, 1.5)]
    assert diff({"logit_bias": {"50256": -100}}, {"logit_bias": {}}) == [
        Change('logit_bias["50256"]', -100, ABSENT)
    ]
    assert diff([1], {"a": 1}) == [Change("(request)", [1], {"a": 1})]


def test_render_cuts_values_and_starts_strings_near_their_difference() -> None:
    prompt = "Summarize the following report in three bullet points: revenue grew"
    changes = diff({"p": prompt + " 4%", "x": "y" * 100}, {"p": prompt + " 5%", "t": 0.2, "x": "z"})
    assert render(changes) == (
        f'p: "…revenue grew 4%" -> "…revenue grew 5%"; t: (absent) -> 0.2; x: "{"y" * 46}… -> "z"'
    )
    many = diff({f"k{i}": i for i in range(9)}, {})
    assert render(many, most=2) == "k0: 0 -> (absent); k1: 1 -> (absent); and 7 more"


def test_distance_prefers_the_smaller_edit() -> None:
    near = diff({"p": "What is the capital of France?"}, {"p": "What is the capital of Spain?"})
    far = diff({"p": "Something else"}, {"p": "What is the capital of Spain?"})
    assert len(near) == len(far) == 1
    assert distance(near) < distance(far)
    assert distance(diff({}, {"t": 0.2})) == 3
