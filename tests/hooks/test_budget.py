"""
The rate budget: per process, or one for the deployment in a real Redis server (over loopback sockets).

What the gateway saw is read from the simulator's call log (``started`` of each request), so "spaced" and
"no 429" are measured where the limit is enforced, not where the client thinks it sent.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable

import pytest
import redis

from airflow_provider_grok.exceptions import GrokValidationError
from airflow_provider_grok.hooks._budget import (
    AsyncRedisBudget,
    LocalBudget,
    RedisBudget,
    budget_key,
    redis_target,
)
from airflow_provider_grok.hooks.grok import GrokAsyncHook, GrokHook
from airflow_provider_grok.protocol import ConnectionSettings
from airflow_provider_grok.testing import GrokSimulator, busiest_second
from tests.support import RedisServer, wait_until

LOG = logging.getLogger("test-budget")


def settings(rps: float | None = 5, key: str = "key-1", base: str = "https://api.x.ai") -> ConnectionSettings:
    return ConnectionSettings(base_url=base, api_key=key, requests_per_second=rps, redis_conn_id="grok_redis")


def take_start(budget: RedisBudget | LocalBudget, deadline: float = 20.0) -> float:
    """Wait as a transport does until the budget grants a start; return when it did (monotonic)."""
    limit = time.monotonic() + deadline
    while (wait := budget.next_start()) > 0:
        assert time.monotonic() < limit, "the budget never granted a start"
        time.sleep(wait)
    return time.monotonic()


# --- per process ---


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_local_budget_spaces_starts_evenly() -> None:
    clock = FakeClock()
    budget = LocalBudget(4, clock)  # one start every 0.25 s, never two at once
    assert budget.next_start() == 0.0
    assert budget.next_start() == pytest.approx(0.25)  # asked again at once: wait
    clock.now += 0.25
    assert budget.next_start() == 0.0
    clock.now += 10
    assert budget.next_start() == 0.0
    assert budget.next_start() == pytest.approx(0.25)  # no burst after a quiet spell either
    assert LocalBudget(None, clock).next_start() == 0.0


def test_local_budget_pause_holds_every_start() -> None:
    clock = FakeClock()
    budget = LocalBudget(None, clock)
    budget.pause(2.0)
    assert budget.next_start() == pytest.approx(2.0)
    clock.now += 2.0
    assert budget.next_start() == 0.0


# --- reading the redis connection ---


def test_redis_target_reads_the_redis_providers_connection(redis_conn: str, redis_server: RedisServer) -> None:
    target = redis_target(redis_conn)
    assert target.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert target.password == redis_server.password
    assert redis_server.password not in repr(target)  # and never in the URL, which the log may show


def test_redis_target_refuses_a_missing_connection_and_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(GrokValidationError, match=r"redis_conn_id='nope'.*cannot be read"):
        redis_target("nope")
    monkeypatch.setenv("AIRFLOW_CONN_CLUSTERED", '{"conn_type": "redis", "host": "h", "extra": {"cluster": true}}')
    with pytest.raises(GrokValidationError, match="is a cluster"):
        redis_target("clustered")


def test_the_budget_is_named_by_gateway_and_a_hash_of_the_key() -> None:
    name = budget_key(settings(key="xai-secret-key"))
    assert "xai-secret-key" not in name
    assert name == budget_key(settings(key="xai-secret-key", base="https://api.x.ai/v1/"))  # same endpoint
    assert name != budget_key(settings(key="another-key"))
    assert name != budget_key(settings(key="xai-secret-key", base="https://gateway.example"))


# --- one budget for the deployment ---


def test_budgets_of_many_processes_space_their_starts(redis_conn: str) -> None:
    target = redis_target(redis_conn)
    # Three budgets, three Redis clients: what three workers with one key each hold.
    budgets = [RedisBudget(settings(rps=5), target, LOG) for _ in range(3)]
    starts: list[float] = []
    lock = threading.Lock()

    def sender(budget: RedisBudget) -> None:
        for _ in range(4):
            started = take_start(budget)
            with lock:
                starts.append(started)

    threads = [threading.Thread(target=sender, args=(b,)) for b in budgets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    starts.sort()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 12
    # 1/rps = 0.2 s apart on the Redis server's clock; a few ms of loopback jitter either way.
    assert min(gaps) > 0.17, gaps
    assert busiest_second(starts) <= 6


async def test_sync_and_async_senders_share_one_cell(redis_conn: str) -> None:
    target = redis_target(redis_conn)
    sync_budget = RedisBudget(settings(rps=2), target, LOG)
    async_budget = AsyncRedisBudget(settings(rps=2), target, LOG)
    try:
        assert sync_budget.next_start() == 0.0
        wait = await async_budget.next_start()  # the worker's start is the triggerer's too
        assert 0.3 < wait <= 0.5
    finally:
        await async_budget.aclose()


async def test_a_429_pause_reaches_every_budget_on_that_key(redis_conn: str) -> None:
    target = redis_target(redis_conn)
    worker = RedisBudget(settings(rps=None), target, LOG)
    triggerer = AsyncRedisBudget(settings(rps=None), target, LOG)
    other_key = RedisBudget(settings(rps=None, key="key-2"), target, LOG)
    try:
        worker.pause(1.5)
        assert 1.0 < await triggerer.next_start() <= 1.5
        assert other_key.next_start() == 0.0  # another key's limit is its own
    finally:
        await triggerer.aclose()


def test_redis_going_away_falls_back_to_the_local_limit_and_says_so_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RedisServer() as server:
        monkeypatch.setenv("AIRFLOW_CONN_GOING_AWAY", server.connection_json())
        budget = RedisBudget(settings(rps=10), redis_target("going_away"), LOG)
        take_start(budget)
        server.stop()  # mid-run: connection refused from now on
        with caplog.at_level(logging.WARNING, logger=LOG.name):
            starts = [take_start(budget) for _ in range(5)]
        warnings = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert "falls back to its own limit (10 requests/s)" in warnings[0].getMessage()
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert min(gaps) > 0.08  # the per-process limit still holds


# --- through the hooks, measured at the gateway ---


def burst(make_hook: Callable[[], GrokHook], hooks: int, calls: int) -> None:
    """``hooks`` hook instances (as many task processes), each sending ``calls`` generations in turn."""

    def run(hook: GrokHook) -> None:
        for i in range(calls):
            hook.generate_images(f"fleet {i}")

    threads = [threading.Thread(target=run, args=(make_hook(),)) for _ in range(hooks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


def test_with_redis_the_fleet_holds_the_gateways_limit(
    xai_sim: GrokSimulator, make_conn: Callable[..., str], redis_conn: str
) -> None:
    xai_sim.rate_limit = 4  # the gateway allows 4 starts a second
    conn = make_conn(xai_sim, requests_per_second=2, redis_conn_id=redis_conn)
    burst(lambda: GrokHook(conn, retry_backoff=0.05), hooks=3, calls=3)
    calls = xai_sim.generation_calls
    assert len(calls) == 9 and {c.status for c in calls} == {200}  # no 429
    assert busiest_second([c.started for c in calls]) <= 3


def test_without_redis_each_process_keeps_its_own_limit_and_the_fleet_draws_429s(
    xai_sim: GrokSimulator, make_conn: Callable[..., str]
) -> None:
    xai_sim.rate_limit = 4
    conn = make_conn(xai_sim, requests_per_second=2)
    burst(lambda: GrokHook(conn, retry_backoff=0.05), hooks=3, calls=3)
    calls = xai_sim.generation_calls
    assert busiest_second([c.started for c in calls]) > 4  # 3 processes x 2/s
    assert any(c.status == 429 for c in calls)


def test_a_429_pauses_the_other_processes_on_the_key(
    xai_sim: GrokSimulator, make_conn: Callable[..., str], redis_conn: str
) -> None:
    conn = make_conn(xai_sim, redis_conn_id=redis_conn)
    xai_sim.fail(429, times=1, retry_after=1.5)
    first = threading.Thread(target=lambda: GrokHook(conn).generate_images("first"))
    first.start()
    wait_until("the 429", lambda: any(c.status == 429 for c in xai_sim.generation_calls), 10)
    limited_at = xai_sim.generation_calls[0].finished
    GrokHook(conn).generate_images("second")  # another process: it never saw the 429 itself
    first.join(timeout=20)
    second = next(c for c in xai_sim.generation_calls if c.prompt == "second")
    assert second.started - limited_at > 1.3


async def test_the_async_hook_books_its_starts_in_the_same_budget(
    xai_sim: GrokSimulator, make_conn: Callable[..., str], redis_conn: str
) -> None:
    conn = make_conn(xai_sim, requests_per_second=4, redis_conn_id=redis_conn)
    hook = GrokAsyncHook(conn)
    try:
        await asyncio.gather(*(hook.generate_images(f"async {i}") for i in range(4)))
    finally:
        await hook.aclose()
    starts = sorted(c.started for c in xai_sim.generation_calls)
    assert min(b - a for a, b in itertools.pairwise(starts)) > 0.2


def test_a_hook_whose_redis_is_down_still_generates(
    xai_sim: GrokSimulator, make_conn: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = RedisServer()  # a port nothing listens on
    monkeypatch.setenv("AIRFLOW_CONN_DEAD_REDIS", dead.connection_json())
    conn = make_conn(xai_sim, requests_per_second=20, redis_conn_id="dead_redis")
    result = GrokHook(conn).generate_images("still works", n=2)
    assert len(result.images) == 2 and len(xai_sim.generation_calls) == 1


def test_the_api_key_never_reaches_redis(
    xai_sim: GrokSimulator, make_conn: Callable[..., str], redis_conn: str, redis_server: RedisServer
) -> None:
    conn = make_conn(xai_sim, requests_per_second=5, redis_conn_id=redis_conn)
    xai_sim.fail(429, times=1, retry_after=0.1)
    GrokHook(conn).generate_images("keys")
    client = redis.Redis(port=redis_server.port, password=redis_server.password)
    keys = [k.decode() for k in client.keys("*")]
    assert keys and all(xai_sim.api_key not in k for k in keys)
    assert all(xai_sim.api_key.encode() not in (client.get(k) or b"") for k in keys if client.type(k) == b"string")
