"""Whose turn a notification is (deliverer.delivery.wakeups.chosen)."""

from collections import Counter

from deliverer.delivery.wakeups import TURN, chosen

WORKERS = [f"worker-{n}" for n in range(8)]


def test_consecutive_transactions_wake_the_same_worker() -> None:
    start = 1_000 * TURN
    assert len({chosen(str(txid), WORKERS) for txid in range(start, start + TURN)}) == 1


def test_turns_spread_over_every_worker() -> None:
    turns = Counter(chosen(str(turn * TURN), WORKERS) for turn in range(8_000))
    assert set(turns) == set(WORKERS)
    assert min(turns.values()) > 0.8 * 8_000 / len(WORKERS)


def test_every_process_agrees_and_passed_on_work_is_not_grouped() -> None:
    assert chosen("12345", WORKERS) == chosen("12345", list(WORKERS))
    # "more <sender> <n>" payloads are not transaction ids: each has its own turn.
    assert len({chosen(f"more worker-0 {n}", WORKERS) for n in range(64)}) > 1


def test_no_list_or_no_payload_wakes() -> None:
    assert chosen("42", []) is None
    assert chosen("", WORKERS) is None
