"""StoreDeadline: a store call's timeout that does not count the time its own event loop was too busy to read."""

from __future__ import annotations

import asyncio
import time

import pytest

from sluice.state import StoreDeadline


async def test_a_call_not_answered_in_time_raises_timeout_error() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with StoreDeadline(0.02):
            await asyncio.sleep(1.0)
    assert time.monotonic() - started < 0.5


async def test_an_answer_in_time_passes_through_and_leaves_no_timer_behind() -> None:
    async with StoreDeadline(0.05) as deadline:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.08)  # a timer left armed would cancel this task now
    assert deadline.extensions == 0


async def test_an_answer_that_arrived_while_the_loop_was_blocked_is_not_a_timeout() -> None:
    """The answer comes at 5 ms, the deadline is 20 ms, and the loop is blocked for 60 ms in between: when the loop
    gets to its timers, both have passed. asyncio.timeout would cancel the call; the store was on time."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    loop.call_later(0.005, answer.set_result, "reply")
    loop.call_soon(time.sleep, 0.06)
    async with StoreDeadline(0.02) as deadline:
        assert await answer == "reply"
    assert deadline.extensions == 1


async def test_a_loop_that_stays_blocked_still_times_out_after_a_bounded_number_of_extensions() -> None:
    loop = asyncio.get_running_loop()
    blocking = True

    def block_again() -> None:
        if blocking:
            time.sleep(0.03)
            loop.call_later(0.001, block_again)

    loop.call_soon(block_again)
    deadline = StoreDeadline(0.01)
    try:
        with pytest.raises(TimeoutError):
            async with deadline:
                await asyncio.sleep(10)
    finally:
        blocking = False
    assert deadline.extensions == StoreDeadline.MAX_EXTENSIONS


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def call() -> None:
        async with StoreDeadline(1.0):
            await asyncio.sleep(10)

    task = asyncio.create_task(call())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_opening_a_connection_has_a_budget_of_its_own() -> None:
    """A call that must first open a connection: the opening does not eat the call's timeout (a fresh connection on
    a CPU-starved gateway is not a slow Redis), but it is bounded by its own budget, and the call's time left is
    what it was when the opening began."""
    async with StoreDeadline(0.05) as deadline:
        async with deadline.connecting(1.0):
            await asyncio.sleep(0.15)  # three times the call's timeout
        await asyncio.sleep(0.01)
    with pytest.raises(TimeoutError):
        async with StoreDeadline(0.05) as deadline:
            async with deadline.connecting(0.05):
                await asyncio.sleep(1.0)
    with pytest.raises(TimeoutError):
        async with StoreDeadline(0.05) as deadline:
            async with deadline.connecting(1.0):
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)
