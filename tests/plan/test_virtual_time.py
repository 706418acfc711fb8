"""Virtual time: sleeps end in deadline order without wall time passing; a wait for nothing is said, not hung."""

from __future__ import annotations

import asyncio

import pytest

from sluice.plan._virtual_time import Stalled, VirtualClock, run_virtual


def test_sleepers_wake_in_deadline_order_at_their_deadlines():
    async def main() -> list[tuple[str, float]]:
        clock = VirtualClock(asyncio.get_running_loop())
        woken: list[tuple[str, float]] = []

        async def sleeper(name: str, delays: list[float]) -> None:
            for delay in delays:
                await clock.sleep(delay)
                woken.append((name, clock.now()))

        await asyncio.gather(sleeper("a", [3600.0, 1.5]), sleeper("b", [0.25, 7200.0]))
        return woken

    assert run_virtual(main()) == [("b", 0.25), ("a", 3600.0), ("a", 3601.5), ("b", 7200.25)]


def test_a_wait_nothing_will_end_is_an_error_not_a_hang():
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(Stalled):
        run_virtual(main())
