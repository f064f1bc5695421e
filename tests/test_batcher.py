"""The serving path's dynamic batcher: batches form when the model is free, as large as the load."""

from __future__ import annotations

import asyncio
import time

import pytest

from raymaas.serving.batching import Batcher
from raymaas.serving.errors import InvalidInput, ModelFailure, Unavailable


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
        with pytest.raises(ModelFailure, match="the model broke") as failed:  # raised, not returned
            await batcher.submit(1)
        second = await batcher.submit(2)
        batcher.stop()
        return failed.value, second

    failed, second = asyncio.run(scenario())
    assert failed.status == 500 and second == 2


def test_an_item_answered_with_an_error_raises_it_to_its_caller_alone():
    def half_bad(items):
        return [InvalidInput(f"bad {i}") if i % 2 else i for i in items]

    async def scenario():
        batcher = Batcher(half_bad, max_batch_size=8)
        got = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
        batcher.stop()
        return got

    got = asyncio.run(scenario())
    assert got[0] == 0 and got[2] == 2
    assert isinstance(got[1], InvalidInput) and got[1].status == 422 and str(got[3]) == "bad 3"


def test_a_yielding_batcher_runs_only_while_the_other_is_idle_and_drops_beyond_its_bound():
    """A shadow rollout's copies: never beside a request's batch, at most max_queued waiting."""
    log = []

    def work(tag):
        def run(items):
            log.append((tag, "start", time.perf_counter()))
            time.sleep(0.03)
            log.append((tag, "end", time.perf_counter()))
            return items

        return run

    async def scenario():
        main = Batcher(work("main"), max_batch_size=2)
        shadow = Batcher(work("shadow"), max_batch_size=2, yield_to=main, max_queued=3)
        requests = [asyncio.ensure_future(main.submit(i)) for i in range(6)]  # 3 batches of 2
        await asyncio.sleep(0)
        copies = [asyncio.ensure_future(shadow.submit(i)) for i in range(5)]  # 3 queue, 2 dropped
        answered = await asyncio.gather(*requests)
        shadowed = await asyncio.gather(*copies, return_exceptions=True)
        main.stop()
        shadow.stop()
        return answered, shadowed, shadow.dropped

    answered, shadowed, dropped = asyncio.run(scenario())
    assert answered == list(range(6))
    assert shadowed[:3] == [0, 1, 2] and all(isinstance(s, Unavailable) for s in shadowed[3:]) and dropped == 2
    main_end = max(t for tag, edge, t in log if tag == "main" and edge == "end")
    shadow_start = min(t for tag, edge, t in log if tag == "shadow" and edge == "start")
    assert shadow_start >= main_end, log  # the copies waited for every queued request


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
