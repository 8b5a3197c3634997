"""The stats vocabulary: every counter survives its hash-field encoding, and the names
stay the ones already stored in Redis (docs/keyspace.md)."""

from __future__ import annotations

import pytest

from proxy.errors import (
    AuthenticationFailed,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.stats.schema import (
    ALL_METRICS,
    LATENCY_BOUNDS_MS,
    LATENCY_BUCKETS,
    CacheOutcome,
    Counts,
    ErrorKind,
    LatencyBucket,
    LatencySum,
    LimitKind,
    Metric,
    RequestRecord,
    classify,
    decode_hash,
    event_fields,
    field,
    latency_bucket,
    metric_name,
    parse_field,
)

STORED_NAMES = {
    "requests",
    "hit",
    "miss",
    "bypass",
    "err_bad_request",
    "err_upstream",
    "err_redis",
    "err_internal",
    "err_auth",
    "limited_requests",
    "limited_tokens",
    "limited_budget",
    "limiter_errors",
    "not_cacheable",
    "saved_prompt",
    "saved_completion",
    "upstream_prompt",
    "upstream_completion",
    "provider_cached_prompt",
    "coalesced",
    "events_skipped",
    *(
        f"lat_{kind}|{i}"
        for kind in ("hit", "miss", "bypass", "coalesced")
        for i in range(len(LATENCY_BOUNDS_MS))
    ),
    *(f"lat_{kind}_sum_us" for kind in ("hit", "miss", "bypass", "coalesced")),
}


def test_every_metric_round_trips() -> None:
    for model in ("gpt-4o-mini", "-", "openai/gpt-4o:2024-08-06", "demo"):
        for metric in ALL_METRICS:
            assert parse_field(field(model, metric)) == (model, metric)


def test_names_are_the_stored_ones() -> None:
    names = [metric_name(m) for m in ALL_METRICS]
    assert len(names) == len(set(names))  # no two metrics share a name
    assert set(names) == STORED_NAMES
    assert field("gpt", LatencyBucket(CacheOutcome.MISS, 3)) == "gpt|lat_miss|3"
    assert field("gpt", LatencySum(CacheOutcome.BYPASS)) == "gpt|lat_bypass_sum_us"
    assert field("-", Metric.EVENTS_SKIPPED) == "-|events_skipped"


@pytest.mark.parametrize("raw", ["gpt|nonsense", "no-separator", "gpt|lat_hit|99", "gpt|lat_stale|0", ""])
def test_unknown_fields_are_skipped(raw: str) -> None:
    assert parse_field(raw) is None
    assert decode_hash({raw: 5}) == {}


def test_decode_hash_groups_by_model() -> None:
    per_model = decode_hash({"a|hit": 2, "a|lat_hit|0": 2, "b|requests": 1, "a|requests": 3, "a|junk": 9})
    assert list(per_model) == ["a", "b"]
    a = per_model["a"]
    assert (a[Metric.HIT], a[Metric.REQUESTS], a[Metric.MISS]) == (2, 3, 0)
    assert a.latency_histogram(CacheOutcome.HIT) == [2] + [0] * (len(LATENCY_BOUNDS_MS) - 1)
    assert per_model["b"] == Counts({Metric.REQUESTS: 1})


def test_followers_counted_the_old_way_are_not_hits() -> None:
    """Before COALESCED was an outcome, a follower was written as `hit` + `coalesced` with its
    time under `lat_hit`. Read back, those followers leave the hits; ones written the new
    way (`coalesced` + `lat_coalesced`, no `hit`) stay as they are."""
    old = {"m|requests": 10, "m|hit": 7, "m|miss": 3, "m|coalesced": 5, "m|lat_hit|3": 7}
    counts = decode_hash(old)["m"]
    assert (counts[Metric.HIT], counts[Metric.COALESCED], counts.answered()) == (2, 5, 10)
    new = {"m|requests": 10, "m|hit": 2, "m|miss": 3, "m|coalesced": 5, "m|lat_coalesced|9": 5}
    counts = decode_hash(new)["m"]
    assert (counts[Metric.HIT], counts[Metric.COALESCED], counts.answered()) == (2, 5, 10)
    # A rolling upgrade: an old replica wrote 2 followers, a new one 3, into the same hash.
    mixed = {"m|hit": 4, "m|coalesced": 5, "m|lat_coalesced|9": 3}
    assert decode_hash(mixed)["m"][Metric.HIT] == 2
    # Never below zero, whatever a hand-edited hash holds.
    assert decode_hash({"m|coalesced": 5})["m"][Metric.HIT] == 0


def test_latency_buckets() -> None:
    assert LATENCY_BOUNDS_MS[-1] == float("inf")
    assert latency_bucket(0) == 0
    assert latency_bucket(0.5) == 0  # bounds are inclusive
    assert latency_bucket(0.51) == 1
    for i, bound in enumerate(LATENCY_BOUNDS_MS[:-1]):
        assert latency_bucket(bound) == i
        assert latency_bucket(bound + 0.001) == i + 1
    assert latency_bucket(10**9) == len(LATENCY_BOUNDS_MS) - 1
    for outcome in CacheOutcome:
        assert [b.index for b in LATENCY_BUCKETS[outcome]] == list(range(len(LATENCY_BOUNDS_MS)))


def test_typed_accessors() -> None:
    counts = Counts()
    counts[Metric.ERR_UPSTREAM] += 2
    counts[Metric.LIMITED_TOKENS] += 1
    counts[LatencySum(CacheOutcome.HIT)] += 1500
    assert counts.errors(ErrorKind.UPSTREAM) == 2 and counts.errors(ErrorKind.AUTH) == 0
    assert counts.limited(LimitKind.TOKENS) == 1 and counts.limited(LimitKind.REQUESTS) == 0
    assert counts.latency_sum_us(CacheOutcome.HIT) == 1500


def test_record_takes_plain_strings() -> None:
    """The pipeline sets plain strings; the enums compare equal to them."""
    record = RequestRecord(tenant="acme", model="gpt", cache="HIT")
    assert record.cache == CacheOutcome.HIT and CacheOutcome.HIT.label == "hit"
    record.cache = CacheOutcome.MISS
    assert record.cache == "MISS"
    assert RequestRecord().tenant == "_proxy" and RequestRecord().model == "-"


@pytest.mark.parametrize(
    ("exc", "error", "limited"),
    [
        (RateLimited("slow down", kind="tokens"), None, "tokens"),
        (AuthenticationFailed("who?"), "auth", None),
        (InvalidRequest("bad"), "bad_request", None),
        (ModelNotFound("no such model"), "bad_request", None),
        (PermissionDenied("not yours"), "bad_request", None),  # any other 4xx
        (UpstreamTimeout("late"), "upstream", None),
        (UpstreamError("down"), "upstream", None),
        (ServiceUnavailable("redis"), "redis", None),
        (RuntimeError("bug"), "internal", None),
    ],
)
def test_classify(exc: BaseException, error: str | None, limited: str | None) -> None:
    record = RequestRecord()
    classify(record, exc)
    assert (record.error, record.limited) == (error, limited)


def test_event_fields_are_strings_without_the_prompt() -> None:
    record = RequestRecord(tenant="acme", model="gpt", digest="abc", prompt="secret", prompt_tokens=3)
    classify(record, UpstreamError("down"))
    event = event_fields(record, 1700000000.12345, 12.3456)
    assert event == {
        "ts": "1700000000.123",
        "event": "error",
        "tenant": "acme",
        "model": "gpt",
        "key": "abc",
        "latency_ms": "12.35",
        "tokens": "3",
        "error": "upstream",
    }
    assert all(type(v) is str for v in event.values())
    assert event_fields(RequestRecord(cache="BYPASS"), 0, 0)["event"] == "bypass"
    assert event_fields(RequestRecord(cache=CacheOutcome.COALESCED), 0, 0)["event"] == "coalesced"
    assert event_fields(RequestRecord(limited="requests"), 0, 0)["event"] == "limited"


def test_latency_ends_when_the_answer_went_out() -> None:
    """Work after the answer (storing a miss's answer) is not the client's wait."""
    record = RequestRecord(started=100.0)
    record.answered = 100.25
    assert record.latency_ms() == 250.0  # however long ago that was
    still_running = RequestRecord()
    assert 0 <= still_running.latency_ms() < 1000
