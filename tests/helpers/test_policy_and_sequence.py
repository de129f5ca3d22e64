from __future__ import annotations

import uuid
from collections.abc import Mapping

import pytest

from mqkit.envelope import SEQ, SEQ_SOURCE, HeaderValue
from mqkit.errors import DecodeError, RetryLater
from mqkit.helpers import ClaimBusy, RetryPolicy, SequenceChecker, Sequencer
from mqkit.message import Delivery, Message


def test_fixed_policy() -> None:
    policy = RetryPolicy.fixed(2.0, max_attempts=3)
    assert [policy.backoff(n) for n in (1, 2, 5)] == [2.0, 2.0, 2.0]


def test_exponential_policy_is_capped_and_jittered_within_bounds() -> None:
    policy = RetryPolicy.exponential(0.5, multiplier=2, max_delay=3, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = RetryPolicy.exponential(1.0, jitter=0.25)
    assert jittered.backoff(1, rand=lambda: 0.0) == 0.75
    assert jittered.backoff(1, rand=lambda: 1.0) == 1.25
    assert jittered.nominal_delay(10_000) == jittered.max_delay


def test_which_errors_retry() -> None:
    policy = RetryPolicy(retry_on=(ConnectionError, ValueError), dead_letter_on=(KeyError,))
    assert policy.retries(ConnectionError())
    assert not policy.retries(RuntimeError()), "not listed in retry_on"
    assert not policy.retries(DecodeError("bad body")), "an undecodable body never gets better"
    assert policy.retries(ClaimBusy("k", 1.0)), "a busy duplicate is always looked at again"
    assert isinstance(ClaimBusy("k", 1.0), RetryLater) and ClaimBusy("k", 2.5).retry_after == 2.5
    later = RetryPolicy(retry_on=(KeyError,), dead_letter_on=(Exception,))
    assert later.retries(RetryLater("not yet", 1.0)), "'not yet' is never a reason to give up"
    narrow = RetryPolicy(dead_letter_on=(ValueError,))
    assert not narrow.retries(ValueError()) and narrow.retries(OSError())


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=2)


def sequenced(headers: Mapping[str, HeaderValue], key: str = "k") -> Message:
    delivery = Delivery("t", b"1", key, headers, uuid.uuid4().hex, 0.0, 1)
    return Message(delivery, 1, None, lambda *a: None)


def test_sequence_checker_reports_gaps_late_arrivals_and_duplicates() -> None:
    stamp = Sequencer("src")
    headers = [stamp.headers("t", "k") for _ in range(6)]
    assert [h[SEQ] for h in headers] == ["1", "2", "3", "4", "5", "6"]
    assert {h[SEQ_SOURCE] for h in headers} == {"src"}
    anomalies: list[str] = []
    checker = SequenceChecker(lambda e: anomalies.append(f"{e.verdict}:{e.seq}"))
    verdicts = [checker.observe(sequenced(headers[i])).verdict for i in (0, 1, 4, 2, 2, 5)]
    assert verdicts == ["ok", "ok", "gap", "late", "duplicate", "ok"]
    assert anomalies == ["gap:5", "late:3", "duplicate:3"]
    assert checker.missing() == {("src", "t", "k"): (4,)}
    assert checker.observe(sequenced({})).verdict == "unsequenced"
    other_key = stamp.headers("t", "other")
    assert checker.observe(sequenced(other_key, key="other")).verdict == "ok"
