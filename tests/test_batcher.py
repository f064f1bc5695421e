"""The serving path's dynamic batcher: batches form when the model is free, as large as the load."""

from __future__ import annotations

import asyncio
import time

import pytest

from raymaas.serving.batching import Batcher


def slow_double(items: list[int]) -> list[int]:
    time.sleep(0.02)  # a forward pass: the batcher runs it in a thread
    return [2 * i for i in items]


def test_steady_load_is_batched_and_a_lone_request_is_not_kept_waiting():
    async def scenario():
        batcher = Batcher(slow_double, max_batch_size=8)
        started = time.perf_counter()
        assert await batcher.submit(5) == 10
        lone = time.perf_counter() - started

        async def client(k: int) -> list[int]:  # a closed loop: the next request when the last returns
            return [await batcher.submit(k * 100 + i) for i in range(10)]

        answers = await asyncio.gather(*(client(k) for k in range(16)))
        batcher.stop()
        return lone, answers, list(batcher.batch_sizes)

    lone, answers, sizes = asyncio.run(scenario())
    assert lone < 0.5 and sizes[0] == 1
    assert answers == [[2 * (k * 100 + i) for i in range(10)] for k in range(16)]
    under_load = sizes[1:]
    assert max(under_load) == 8 and sum(under_load) == 160
    # 16 clients, at most 8 a batch: almost every batch is full once the load is steady
    assert sum(under_load) / len(under_load) >= 6, under_load


def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs():
    calls = []

    def flaky(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("the model broke")
        return items

    async def scenario():
        batcher = Batcher(flaky, max_batch_size=4)
        first = await batcher.submit(1)
        second = await batcher.submit(2)
        batcher.stop()
        return first, second

    first, second = asyncio.run(scenario())
    assert isinstance(first, RuntimeError) and second == 2


def test_a_cancelled_request_is_left_out_of_the_batch():
    seen = []

    def record(items):
        seen.extend(items)
        time.sleep(0.05)
        return items

    async def scenario():
        batcher = Batcher(record, max_batch_size=4)
        busy = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(0.01)  # "first" is running; the next two queue behind it
        gone = asyncio.ensure_future(batcher.submit("gone"))
        kept = asyncio.ensure_future(batcher.submit("kept"))
        await asyncio.sleep(0)
        gone.cancel()  # the client disconnected
        results = await asyncio.gather(busy, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
        batcher.stop()
        return results

    assert asyncio.run(scenario()) == ["first", "kept"]
    assert seen == ["first", "kept"]
