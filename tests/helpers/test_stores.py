"""Each idempotency store against its real backend: claim, busy, done, expiry, release, races."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mqkit.helpers.idempotency import Claim, IdempotencyStore, idempotent
from mqkit.message import Delivery, Message
from mqkit.testing.stores import KINDS, make_store


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IdempotencyStore]:
    with make_store(request.param, tmp_path) as s:
        yield s


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


def fake_message(value: str, *, attempt: int = 1, headers: dict[str, str] | None = None) -> Message:
    settled: list[tuple[bool, bool, float]] = []
    delivery = Delivery("t", value.encode(), None, headers or {}, uuid.uuid4().hex, 0.0, attempt)
    return Message(delivery, value, None, lambda m, a, r, d: settled.append((a, r, d)))


def test_claim_then_done_then_expiry(store: IdempotencyStore) -> None:
    k = key()
    assert store.claim(k, "a", 30).status == "claimed"
    busy = store.claim(k, "b", 30)
    assert busy.status == "busy" and 0 < busy.retry_after <= 30
    assert store.complete(k, "a", 0.4) is True
    assert store.claim(k, "c", 30) == Claim("done")
    time.sleep(0.5)
    assert store.claim(k, "c", 30).status == "claimed", "a done mark expires after its ttl"


def test_release_frees_only_the_holders_claim(store: IdempotencyStore) -> None:
    k = key()
    assert store.claim(k, "a", 30).status == "claimed"
    store.release(k, "not-a")
    assert store.claim(k, "b", 30).status == "busy"
    store.release(k, "a")
    assert store.claim(k, "b", 30).status == "claimed"


def test_a_crashed_claim_expires_after_its_lease(store: IdempotencyStore) -> None:
    """The documented window: the holder died after its side effect, before the done mark."""
    k = key()
    assert store.claim(k, "crashed", 0.3).status == "claimed"
    assert store.claim(k, "redelivery", 30).status == "busy"
    time.sleep(0.4)
    assert store.claim(k, "redelivery", 30).status == "claimed"
    assert store.complete(k, "crashed", 60) is False, "the late holder learns its claim was lost"
    assert store.claim(k, "x", 30).status == "done"


def test_concurrent_claims_have_one_winner(store: IdempotencyStore) -> None:
    k = key()
    results: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def contend(n: int) -> None:
        start.wait()
        status = store.claim(k, f"t{n}", 30).status
        with lock:
            results.append(status)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(results) == {"claimed": 1, "busy": 7}


def test_wrapper_runs_once_and_retries_after_a_failure(store: IdempotencyStore) -> None:
    calls: list[str] = []
    fail = [True]
    namespace = uuid.uuid4().hex

    @idempotent(store, key=lambda m: str(m.value), namespace=namespace)
    def handler(message: Message) -> str:
        calls.append(message.value)
        if fail[0]:
            raise RuntimeError("boom")
        return "ok"

    with pytest.raises(RuntimeError):
        handler(fake_message("order-1"))
    fail[0] = False
    assert handler(fake_message("order-1")) == "ok", "a failure releases the claim"
    assert handler(fake_message("order-1")) is None, "a done identity is skipped"
    assert calls == ["order-1", "order-1"]


def test_crash_between_side_effect_and_mark_runs_again_after_the_lease(
    store: IdempotencyStore,
) -> None:
    """What the docs promise for the crash window: a second run once the lease is over."""
    effects: list[str] = []
    namespace = uuid.uuid4().hex
    wrapped = idempotent(store, key=lambda m: str(m.value), namespace=namespace, lease=0.3)(
        lambda m: effects.append(m.value)
    )
    # The first delivery claimed and did its side effect, then the process died.
    assert store.claim(f"{namespace}:order-9", "dead-process", 0.3).status == "claimed"
    effects.append("order-9")
    from mqkit.helpers.idempotency import ClaimBusy

    with pytest.raises(ClaimBusy):  # the redelivery comes too early: given back
        wrapped(fake_message("order-9", attempt=2))
    time.sleep(0.4)
    wrapped(fake_message("order-9", attempt=3))
    assert effects == ["order-9", "order-9"]
    wrapped(fake_message("order-9", attempt=4))
    assert effects == ["order-9", "order-9"]
