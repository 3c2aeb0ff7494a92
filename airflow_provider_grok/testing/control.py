"""Drive a Grok simulator that runs in another process, over its HTTP control API on loopback.

For end-to-end tests of a real deployment: start ``python -m airflow_provider_grok.testing --ready-file
sim.json``, point the ``grok`` connection at it, and from the test::

    sim = SimulatorControl("http://127.0.0.1:8089")
    sim.set_latency(3)
    sim.fail(503, times=2)
    ...  # trigger the DAG through the REST API, wait for it
    assert sim.billing()["requests_billed"] == 8
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any


class SimulatorControl:
    """
    The simulator's ``/_simulator/...`` endpoints as methods (same names and arguments as
    :class:`~airflow_provider_grok.testing.GrokSimulator`'s own fault methods).

    :param base_url: the simulator's API origin, e.g. ``http://127.0.0.1:8089``.
    """

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def send(self, method: str, action: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(
            f"{self.base_url}/_simulator/{action}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def calls(self) -> list[dict[str, Any]]:
        """Every API call answered so far (see ``RecordedCall.to_json``)."""
        return list(self.send("GET", "calls"))

    def generation_calls(self) -> list[dict[str, Any]]:
        return [c for c in self.calls() if c["method"] == "POST" and c["path"].endswith("/images/generations")]

    def billing(self) -> dict[str, Any]:
        """``requests_billed``, ``images_billed``, ``cost_in_usd_ticks``, ``cost_usd``."""
        return dict(self.send("GET", "billing"))

    def set_latency(self, seconds: float) -> None:
        self.send("POST", "latency", {"seconds": seconds})

    def set_rate_limit(self, per_second: float | None) -> None:
        """Answer 429 past ``per_second`` generation starts in any second (None: no limit)."""
        self.send("POST", "rate_limit", {"per_second": per_second})

    def fail(self, status: int, **kwargs: Any) -> None:
        self.send("POST", "fail", {"status": status, **kwargs})

    def drop_connections(self, **kwargs: Any) -> None:
        self.send("POST", "drop_connections", kwargs)

    def moderate(self, **kwargs: Any) -> None:
        self.send("POST", "moderate", kwargs)

    def slow_down(self, seconds: float, **kwargs: Any) -> None:
        self.send("POST", "slow_down", {"seconds": seconds, **kwargs})

    def fail_downloads(self, status: int, **kwargs: Any) -> None:
        self.send("POST", "fail_downloads", {"status": status, **kwargs})

    def expire_urls(self) -> None:
        self.send("POST", "expire_urls")

    def reset(self) -> None:
        self.send("POST", "reset")


def busiest_second(starts: list[float]) -> int:
    """The most requests that started within any 1-second window (``started`` times of the call log)."""
    ordered = sorted(starts)
    best, first = 0, 0
    for last, start in enumerate(ordered):
        while start - ordered[first] >= 1.0:
            first += 1
        best = max(best, last - first + 1)
    return best
