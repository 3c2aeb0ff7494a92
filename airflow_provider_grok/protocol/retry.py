"""When a failed attempt is retried, and after how long. A retry may be billed again: it is bounded.
The caller passes its clock and its randomness (``now``, ``rng``): nothing here reads either.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from airflow_provider_grok.protocol._text import header
from airflow_provider_grok.protocol.settings import DEFAULT_MAX_RETRIES

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def retry_after_seconds(headers: Mapping[str, str] | None, *, now: float) -> float | None:
    """The wait a 429/503 asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    if (ms := header(headers, "retry-after-ms")) is not None:
        try:
            seconds = float(ms) / 1000
        except ValueError:
            pass
        else:
            if math.isfinite(seconds):  # NaN or inf would reach time.sleep
                return max(seconds, 0.0)
    value = header(headers, "retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """
    When to retry and how long to wait. A retry may be billed again, so it is bounded and logged.

    :param max_retries: retries after the first attempt.
    :param backoff_base: first backoff, seconds; doubles per retry, with jitter.
    :param backoff_max: ceiling of one backoff.
    :param retry_after_max: ceiling applied to a server's ``Retry-After``.
    :param retry_unanswered: retry an API request that got no answer (a timeout, a dropped connection).
        The gateway may have billed it, so a task with a money cap turns this off.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 60.0
    retry_unanswered: bool = True

    def delay(
        self,
        retries_done: int,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        rng: Callable[[], float],
        now: float,
    ) -> float | None:
        """
        Seconds to wait before the next attempt, or None when the failure is final.

        :param retries_done: retries already made for this request (0 after the first failure).
        :param status: the HTTP status, or None for a transport failure (no response).
        :param rng: a random number in [0, 1) for the jitter; :param now: the wall clock (epoch seconds).
        """
        if retries_done >= self.max_retries:
            return None
        if status is not None and status not in RETRYABLE_STATUSES:
            return None
        hinted = retry_after_seconds(headers, now=now)
        if hinted is not None:
            return min(hinted, self.retry_after_max)
        ceiling = min(self.backoff_max, self.backoff_base * 2**retries_done)
        return ceiling * (0.5 + 0.5 * rng())  # "equal jitter": never less than half the backoff
