"""The reconcile queue: a burst of events costs one reconcile; failures back off."""

from __future__ import annotations

import asyncio

from damselfly.operator.reconcile import WorkQueue


async def test_a_burst_of_events_queues_a_key_once() -> None:
    queue = WorkQueue()
    for _ in range(5):
        queue.add(("ns", "a"))
    queue.add(("ns", "b"))
    assert await queue.get() == ("ns", "a")
    assert await queue.get() == ("ns", "b")
    queue.add(("ns", "a"))  # queued again once taken: a change during a reconcile is not lost
    assert await asyncio.wait_for(queue.get(), 1) == ("ns", "a")


async def test_failures_back_off_and_success_resets() -> None:
    queue = WorkQueue()
    delays = [queue.retry(("ns", "a")) for _ in range(9)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays[-1] == 60.0
    queue.done(("ns", "a"))
    assert queue.retry(("ns", "a")) == 0.5
