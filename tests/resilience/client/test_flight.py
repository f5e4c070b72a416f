"""SingleFlight on its own: one run for concurrent callers (threads and
tasks), copies of errors for followers, and a leader whose caller left."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync

from resilience.client.flight import SingleFlight


def test_threads_share_one_run():
    flight, runs, results = SingleFlight(), [], []
    barrier = threading.Barrier(8)

    def work():
        runs.append(1)
        time.sleep(0.05)
        return "answer"

    def call():
        barrier.wait()
        results.append(flight.run("k", work, wait=5))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(runs) == 1
    assert sorted(shared for _, shared in results) == [False] + [True] * 7


def test_followers_raise_a_copy_of_the_leaders_error():
    flight = SingleFlight()
    errors: list[BaseException] = []
    started = threading.Event()

    def work():
        started.set()
        time.sleep(0.05)
        raise ValueError("boom")

    def lead():
        try:
            flight.run("k", work, wait=5)
        except ValueError as err:
            errors.append(err)

    leader = threading.Thread(target=lead)
    leader.start()
    started.wait()
    with pytest.raises(ValueError, match="boom") as followed:
        flight.run("k", work, wait=5)
    leader.join()
    assert errors and followed.value is not errors[0]


def test_tasks_share_one_run_and_a_cancelled_leader_still_answers_the_others():
    flight, runs = SingleFlight(), []

    async def work():
        runs.append(1)
        await asyncio.sleep(0.05)
        return "answer"

    async def scenario():
        leader = asyncio.create_task(flight.arun("k", work, wait=5))
        await asyncio.sleep(0.01)
        followers = [asyncio.create_task(flight.arun("k", work, wait=5)) for _ in range(5)]
        await asyncio.sleep(0.01)
        leader.cancel()  # its client went away
        return await asyncio.gather(*followers)

    answers = async_to_sync(scenario)()
    assert answers == [("answer", True)] * 5 and len(runs) == 1


def test_a_follower_stops_waiting_at_its_limit():
    flight = SingleFlight()
    release = threading.Event()
    leader = threading.Thread(target=lambda: flight.run("k", lambda: release.wait(5), wait=5))
    leader.start()
    time.sleep(0.02)
    with pytest.raises(TimeoutError):
        flight.run("k", lambda: None, wait=0.05)
    release.set()
    leader.join()
