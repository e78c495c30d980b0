"""Repository leases: a copy claims, waits for the work on the repository, holds, releases."""

from __future__ import annotations

import asyncio

from backup_coordinator.leases import RepositoryLeases


async def test_a_claim_takes_the_repository_at_once_and_holds_it_once_free() -> None:
    leases = RepositoryLeases()
    busy = {"nas:/a"}
    hold = asyncio.create_task(leases.hold("nas:/a", "cloud", lambda key: key in busy))
    await asyncio.sleep(0)  # let the claim happen
    assert leases.taken() == {"nas:/a"}
    assert leases.holder("nas:/a") is None  # claimed, not held: the backup still runs
    assert not hold.done()
    busy.clear()
    leases.changed()
    await asyncio.wait_for(hold, 5)
    assert leases.holder("nas:/a") == "cloud"
    leases.release("nas:/a", "cloud")
    assert leases.taken() == frozenset()


async def test_a_second_target_waits_for_the_first_ones_hold() -> None:
    leases = RepositoryLeases()
    await leases.hold("nas:/a", "cloud", lambda _key: False)
    second = asyncio.create_task(leases.hold("nas:/a", "usb", lambda _key: False))
    await asyncio.sleep(0)
    assert not second.done()
    leases.release("nas:/a", "usb")  # not the holder: changes nothing
    assert leases.holder("nas:/a") == "cloud"
    leases.release("nas:/a", "cloud")
    await asyncio.wait_for(second, 5)
    assert leases.holder("nas:/a") == "usb"


async def test_a_cancelled_wait_gives_the_claim_back() -> None:
    leases = RepositoryLeases()
    hold = asyncio.create_task(leases.hold("nas:/a", "cloud", lambda _key: True))
    await asyncio.sleep(0)
    assert leases.taken() == {"nas:/a"}
    hold.cancel()
    await asyncio.gather(hold, return_exceptions=True)
    assert leases.taken() == frozenset()
