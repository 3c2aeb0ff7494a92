"""
The rate budget: when a generation request may start. Every transport asks it before each attempt::

    while (wait := budget.next_start()) > 0:
        sleep(wait)                  # time.sleep or asyncio.sleep
    send ...
    a 429's Retry:  budget.pause(delay)     # everyone on this budget waits, not only this caller

Two kinds, chosen by the ``grok`` connection:

- :class:`LocalBudget` (no ``redis_conn_id``): ``requests_per_second`` holds for this process (one task,
  or one trigger).
- :class:`RedisBudget` / :class:`AsyncRedisBudget` (``redis_conn_id`` names an Airflow ``redis``
  connection): ``requests_per_second`` holds for the whole deployment. Every worker and triggerer using
  the same gateway and API key books its starts in one GCRA cell in Redis (throttled-py's atomic script,
  on the Redis server's clock), so starts are spaced ``1/rps`` apart, never bunched into a burst; a 429
  sets one pause key that every sender reads before its next start.

A Redis that cannot be reached never stops the work and never loses or repeats an image: the budget says
so once in the log and falls back to the per-process limit, trying Redis again after
:data:`REDIS_RETRY_SECONDS`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from fractions import Fraction
from typing import Any
from urllib.parse import quote, urlencode

from airflow_provider_grok.exceptions import GrokValidationError
from airflow_provider_grok.protocol import ConnectionSettings

# After Redis failed, how long this process keeps to its own limit before asking Redis again.
REDIS_RETRY_SECONDS = 30.0
# A budget call must never hold a request up for long: Redis answers in a millisecond or not at all.
REDIS_TIMEOUT_SECONDS = 2.0
# What Redis's ssl options of an Airflow ``redis`` connection may say (the redis provider's names).
_SSL_EXTRAS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_keyfile", "ssl_certfile", "ssl_check_hostname")


class LocalBudget:
    """
    Request starts of one process, at most ``requests_per_second``, spaced evenly (a GCRA of burst 1: a
    start is allowed once the previous one is ``1/rps`` old). Thread-safe; its lock is held for microseconds,
    so it is safe on an event loop too.
    """

    def __init__(self, requests_per_second: float | None, clock: Any = time.monotonic) -> None:
        self.interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self.clock = clock
        self._next_allowed = 0.0
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def next_start(self) -> float:
        """0.0: start now (the start is booked); otherwise ask again after that many seconds."""
        now = self.clock()
        with self._lock:
            if now < self._paused_until:
                return self._paused_until - now
            if not self.interval:
                return 0.0
            if now < self._next_allowed:
                return self._next_allowed - now
            self._next_allowed = now + self.interval
            return 0.0

    def pause(self, seconds: float) -> None:
        """No start for ``seconds`` (a 429 told this key to wait)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self.clock() + seconds)


@dataclass(frozen=True)
class RedisTarget:
    """Where a deployment's budget lives: a Redis URL (no secret in it) and the password beside it."""

    conn_id: str
    url: str
    password: str | None = field(default=None, repr=False)


def redis_target(redis_conn_id: str) -> RedisTarget:
    """
    Read an Airflow ``redis`` connection with the redis provider's own hook (host, port, login, password,
    extras ``db``, ``ssl`` and ``ssl_*``) and say where the budget lives. Synchronous: the trigger calls it
    in a thread.
    """
    try:
        from airflow.providers.redis.hooks.redis import RedisHook
    except ImportError as err:
        raise GrokValidationError(
            f"The grok connection sets redis_conn_id={redis_conn_id!r}, but the redis provider is not installed: "
            "pip install 'airflow-provider-grok[fleet]' on every worker and triggerer."
        ) from err
    try:
        conn = RedisHook(redis_conn_id=redis_conn_id).get_connection(redis_conn_id)
    except Exception as err:  # AirflowNotFoundException, or a secrets backend's own error
        raise GrokValidationError(
            f"The grok connection sets redis_conn_id={redis_conn_id!r}, which cannot be read: {err}. Create that "
            "Airflow connection (conn_type 'redis'), or remove redis_conn_id for a per-process limit."
        ) from err
    extra = conn.extra_dejson
    if extra.get("cluster"):
        raise GrokValidationError(
            f"Redis connection {redis_conn_id!r} is a cluster; the request budget needs one Redis server "
            "(or a primary behind a single address): point redis_conn_id at a non-cluster connection."
        )
    if not conn.host:
        raise GrokValidationError(f"Redis connection {redis_conn_id!r} has no host.")
    password = None if str(conn.password).lower() in ("none", "false", "") else conn.password
    if password:
        from airflow.sdk.log import mask_secret

        mask_secret(password)
    scheme = "rediss" if str(extra.get("ssl", "")).lower() in ("true", "1") else "redis"
    user = f"{quote(conn.login, safe='')}@" if conn.login else ""
    query = urlencode({name: extra[name] for name in _SSL_EXTRAS if extra.get(name) not in (None, "")})
    db = int(extra.get("db") or 0)
    url = f"{scheme}://{user}{conn.host}:{conn.port or 6379}/{db}" + (f"?{query}" if query else "")
    return RedisTarget(redis_conn_id, url, password)


def budget_key(settings: ConnectionSettings) -> str:
    """The name of a deployment's budget: the gateway and a hash of the API key, never the key itself."""
    return f"grok:{settings.url('')}:{settings.api_key_hash}"


class _RedisFallback:
    """What both Redis budgets share: the local limit to fall back on, and saying so once per outage."""

    def __init__(self, settings: ConnectionSettings, target: RedisTarget, log: Any, clock: Any) -> None:
        self.target = target
        self.key = budget_key(settings)
        self.pause_key = f"{self.key}:paused"
        self.rps = settings.requests_per_second
        self.local = LocalBudget(self.rps, clock)
        self.log = log
        self.clock = clock
        self._down_until = 0.0
        self._down = False
        self._lock = threading.Lock()

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "SOCKET_TIMEOUT": REDIS_TIMEOUT_SECONDS,
            "SOCKET_CONNECT_TIMEOUT": REDIS_TIMEOUT_SECONDS,
        }
        if self.target.password:
            options["PASSWORD"] = self.target.password
        return options

    def _quota(self) -> Any:
        from throttled import per_duration

        assert self.rps
        # throttled-py counts whole-second periods: 2.5/s is 5 per 2 s. A burst of one spaces the starts
        # 1/rps apart (the emission interval) instead of letting a period's allowance start at once.
        rate = Fraction(self.rps).limit_denominator(1000)
        return per_duration(timedelta(seconds=rate.denominator), limit=rate.numerator, burst=1)

    def _connect(self, client_class: Any, throttled_class: Any, store_module: Any) -> None:
        """A Redis client for the pause key and throttled-py's GCRA cell (sync or asyncio flavours of both)."""
        from throttled import RateLimiterType

        self._errors = _redis_errors()
        self._client = client_class.from_url(
            self.target.url,
            password=self.target.password,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        self._throttled = None
        if self.rps:
            self._throttled = throttled_class(
                key=self.key,
                using=RateLimiterType.GCRA.value,
                quota=self._quota(),
                store=store_module.RedisStore(server=self.target.url, options=self._options()),
            )

    def use_redis(self) -> bool:
        return self.clock() >= self._down_until

    def failed(self, err: BaseException) -> None:
        with self._lock:
            first = not self._down
            self._down, self._down_until = True, self.clock() + REDIS_RETRY_SECONDS
        if first:
            limit = f"{self.rps:g} requests/s" if self.rps else "no rate limit"
            self.log.warning(
                "The request budget in Redis (connection %r) cannot be reached (%s: %s): this process falls back "
                "to its own limit (%s) and tries Redis again every %.0f s. Images are not affected; other "
                "workers may now send at the same time.",
                self.target.conn_id,
                type(err).__name__,
                str(err)[:200],
                limit,
                REDIS_RETRY_SECONDS,
            )

    def recovered(self) -> None:
        if self._down:
            with self._lock:
                self._down = False
            self.log.info("The request budget in Redis (connection %r) is reachable again.", self.target.conn_id)

    @staticmethod
    def wait_from(paused_ms: int | None, result: Any) -> float:
        if paused_ms is not None and paused_ms > 0:
            return paused_ms / 1000
        if result is not None and result.limited:
            return max(float(result.state.retry_after), 0.001)
        return 0.0


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis
    import throttled.exceptions

    return (redis.RedisError, throttled.exceptions.BaseThrottledError, OSError)


class RedisBudget(_RedisFallback):
    """The deployment-wide budget for the sync hook (threads of a worker's task)."""

    def __init__(self, settings: ConnectionSettings, target: RedisTarget, log: Any, clock: Any = time.monotonic):
        super().__init__(settings, target, log, clock)
        import redis
        from throttled import Throttled, store

        self._connect(redis.Redis, Throttled, store)

    def next_start(self) -> float:
        if not self.use_redis():
            return self.local.next_start()
        try:
            paused = self._client.pttl(self.pause_key)
            result = None if paused > 0 or self._throttled is None else self._throttled.limit()
        except self._errors as err:
            self.failed(err)
            return self.local.next_start()
        self.recovered()
        return self.wait_from(paused, result)

    def pause(self, seconds: float) -> None:
        self.local.pause(seconds)
        if not self.use_redis():
            return
        try:
            self._client.set(self.pause_key, "1", px=max(int(seconds * 1000), 1))
        except self._errors as err:
            self.failed(err)


class AsyncRedisBudget(_RedisFallback):
    """The deployment-wide budget for the async hook (the triggerer): the same cell, awaited."""

    def __init__(self, settings: ConnectionSettings, target: RedisTarget, log: Any, clock: Any = time.monotonic):
        super().__init__(settings, target, log, clock)
        import redis.asyncio
        from throttled.asyncio import Throttled, store

        self._connect(redis.asyncio.Redis, Throttled, store)

    async def next_start(self) -> float:
        if not self.use_redis():
            return self.local.next_start()
        try:
            paused = await self._client.pttl(self.pause_key)
            result = None if paused > 0 or self._throttled is None else await self._throttled.limit()
        except self._errors as err:
            self.failed(err)
            return self.local.next_start()
        self.recovered()
        return self.wait_from(paused, result)

    async def pause(self, seconds: float) -> None:
        self.local.pause(seconds)
        if not self.use_redis():
            return
        try:
            await self._client.set(self.pause_key, "1", px=max(int(seconds * 1000), 1))
        except self._errors as err:
            self.failed(err)

    async def aclose(self) -> None:
        await self._client.aclose()
