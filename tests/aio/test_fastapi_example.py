"""examples/fastapi_orders.py runs: its lifespan starts and stops the App, an endpoint
publishes, the handler consumes (on memory:// and SQLite)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi.testclient import TestClient

from mqkit.errors import ClosedError
from mqkit.testing.aio import run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_orders.py"


@pytest.fixture(params=["memory", "sqlite"])
def example(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ModuleType:
    """A fresh copy of the example (its App and its list of billed orders), on its own queue."""
    if request.param == "memory":
        url = f"memory://fastapi-{tmp_path.name}"
    else:
        url = f"sqlite:///{tmp_path / 'q.db'}?poll_interval=0.01"
    monkeypatch.setenv("MQKIT_URL", url)
    spec = importlib.util.spec_from_file_location(f"fastapi_orders_{tmp_path.name}", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_an_order_posted_is_billed_by_the_handler(example: ModuleType) -> None:
    with TestClient(example.api) as client:
        response = client.post("/orders", json={"id": 7, "item": "tea", "quantity": 2})
        assert response.status_code == 202
        assert response.json()["message_id"]
        deadline = time.monotonic() + 10
        while not (billed := client.get("/billed").json()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert billed == [{"id": 7, "item": "tea", "quantity": 2}]
    assert example.mq.stats("billing").processed == 1  # acked before the App stopped
    with pytest.raises(ClosedError):  # the lifespan closed the connection it opened
        run(example.mq.broker.producer)


def test_the_example_never_blocks_the_loop(example: ModuleType) -> None:
    """Lifespan, requests and handler on one loop in debug mode: a callback that holds it
    50 ms fails the test."""

    async def main() -> list[object]:
        api = example.api
        async with api.router.lifespan_context(api):
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                for n in range(20):
                    response = await client.post("/orders", json={"id": n, "item": "cake"})
                    assert response.status_code == 202
                async with asyncio.timeout(10):
                    while len(billed := (await client.get("/billed")).json()) < 20:
                        await asyncio.sleep(0.02)
        return billed  # type: ignore[no-any-return]

    billed = run(main)
    assert sorted(order["id"] for order in billed) == list(range(20))  # type: ignore[index]


def test_an_invalid_order_is_refused_before_it_is_published(example: ModuleType) -> None:
    with TestClient(example.api) as client:
        assert client.post("/orders", json={"id": "seven"}).status_code == 422
        time.sleep(0.2)
        assert client.get("/billed").json() == []
