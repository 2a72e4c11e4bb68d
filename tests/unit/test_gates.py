"""Gates: a worker's requests to each endpoint never exceed the limit its last claim gave it."""

import asyncio

from deliverer.delivery.gates import Gates


async def turns() -> None:
    """Let every task that can run do so: a wait ends a few loop turns after its slot is given."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_deliveries_beyond_the_limit_wait_for_a_request_to_end() -> None:
    gates = Gates()
    gates.limit("ep", 2)
    assert await gates.enter("ep", within=1) and await gates.enter("ep", within=1)
    third = asyncio.create_task(gates.enter("ep", within=10))
    await turns()
    assert not third.done()
    gates.leave("ep")
    assert await third


async def test_a_delivery_that_gets_no_slot_in_time_is_refused_and_holds_none() -> None:
    gates = Gates()
    gates.limit("ep", 1)
    assert await gates.enter("ep", within=1)
    assert await gates.enter("ep", within=0.01) is False
    gates.leave("ep")
    assert await gates.enter("ep", within=0.01)  # the refused one left no claim on the slot


async def test_a_higher_limit_admits_those_waiting_and_a_zero_one_stops_all() -> None:
    gates = Gates()
    gates.limit("ep", 0)
    waiting = [asyncio.create_task(gates.enter("ep", within=10)) for _ in range(3)]
    await turns()
    assert not any(w.done() for w in waiting)
    assert gates.running_low("ep") is False  # three waiting, none may go
    gates.limit("ep", 2)
    await turns()
    assert [w.done() for w in waiting] == [True, True, False]
    gates.leave("ep")
    assert await waiting[2]


async def test_a_cancelled_wait_passes_its_slot_on() -> None:
    gates = Gates()
    gates.limit("ep", 1)
    assert await gates.enter("ep", within=1)
    cut_off = asyncio.create_task(gates.enter("ep", within=10))
    after = asyncio.create_task(gates.enter("ep", within=10))
    await turns()
    cut_off.cancel()
    await turns()
    gates.leave("ep")
    assert await after


async def test_endpoints_are_apart_and_sending_counts_them_all() -> None:
    gates = Gates()
    gates.limit("a", 2)
    gates.limit("b", 1)
    assert [await gates.enter("a", within=0) for _ in range(3)] == [True, True, False]
    assert await gates.enter("b", within=0) and not await gates.enter("b", within=0)
    assert gates.sending == 3
    assert gates.running_low("a")  # nothing waits there
    gates.leave("a")
    assert gates.sending == 2
