"""
S3 faults in real DAGs: boto3 talks to a fault-injecting proxy (``testing/s3_faults.py``) in front of the
moto server, over loopback HTTP. What the gateway billed comes from the simulator; what was stored, from
moto directly (behind the proxy).
"""

from __future__ import annotations

import json
import time

import pytest

from airflow_provider_grok.testing.s3_faults import S3FaultProxy
from tests.support import dag_source

PROMPTS = [f"s3 fault prompt {i}" for i in range(6)]


@pytest.fixture
def proxy(s3, monkeypatch):
    with S3FaultProxy(s3.endpoint) as faults:
        extra = {"endpoint_url": faults.endpoint, "region_name": "us-east-1"}
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws", "extra": extra}))
        monkeypatch.setenv("AIRFLOW__GROK__S3_OUTAGE_SECONDS", "3")  # how long a paid image waits for S3
        yield faults


def generate(s3, prefix: str, **args: str) -> str:
    extra = "".join(f", {k}={v}" for k, v in args.items())
    return dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt={PROMPTS!r}, s3_bucket="{s3.bucket}", '
        f's3_key_prefix="{prefix}", max_concurrency=2, response_format="url"{extra})'
    )


def stored(s3, prefix: str) -> list[str]:
    return [k for k in s3.object_keys(prefix + "/") if k.endswith(".jpg")]


def test_throttling_is_absorbed_by_botocores_retries(grok_simulator, s3, dag_runner, proxy):
    proxy.throttle(times=3)  # 503 SlowDown on the next three writes
    result = dag_runner.run(generate(s3, "throttled"))

    assert result.state == "success" and proxy.refused == 3
    assert len(stored(s3, "throttled")) == 6 and len(grok_simulator.generation_calls) == 6


def test_a_brief_outage_loses_no_paid_image_and_a_retry_sends_only_what_was_not_sent(
    grok_simulator, s3, dag_runner, proxy
):
    grok_simulator.latency = 0.3
    # Every write is refused for 1.5 s (longer than botocore retries), then S3 is back.
    original = proxy.take_fault
    outage: dict[str, float] = {}

    def brief_outage(method: str, path: str = "") -> str | None:
        if "start" not in outage and len(stored(s3, "brief")) >= 1:
            outage["start"] = time.monotonic()
        if method == "PUT" and "start" in outage and time.monotonic() - outage["start"] < 1.5:
            outage["refused"] = outage.get("refused", 0) + 1
            return "deny"
        return original(method, path)

    proxy.take_fault = brief_outage  # type: ignore[method-assign]
    result = dag_runner.run(generate(s3, "brief", retries="1", retry_delay="datetime.timedelta(seconds=0)"))

    assert result.state == "success" and outage["refused"] >= 2
    assert len(stored(s3, "brief")) == 6
    # The answers paid for during the outage waited in memory and were stored; the requests whose receipt
    # S3 refused were never sent, and the retry sent them: every prompt was paid for exactly once.
    prompts = [c.prompt for c in grok_simulator.generation_calls]
    assert sorted(prompts) == sorted(PROMPTS)


@pytest.mark.parametrize(("fault", "deferrable"), [("deny_writes", False), ("go_away", False), ("deny_writes", True)])
def test_when_s3_stops_accepting_writes_no_new_request_is_sent_and_the_error_names_what_was_paid(  # noqa: PLR0917
    grok_simulator, s3, dag_runner, proxy, capfd, fault, deferrable
):
    grok_simulator.latency = 0.5
    watch: dict[str, float] = {}
    original = proxy.take_fault

    def outage_after_the_first_image(method: str, path: str = "") -> str | None:
        if "since" not in watch and len(stored(s3, "outage")) >= 1:
            watch["since"] = time.monotonic()
            getattr(proxy, fault)()  # credentials expired / the endpoint is gone, mid-run, for good
        return original(method, path)

    proxy.take_fault = outage_after_the_first_image  # type: ignore[method-assign]
    result = dag_runner.run(generate(s3, "outage", deferrable=str(deferrable)))

    assert result.state == "failed"
    kept = stored(s3, "outage")
    calls = grok_simulator.generation_calls
    # No request was sent once S3 refused writes (its receipt must be written first; a request whose receipt
    # went through a moment before may start just after), so not every prompt was paid for.
    assert len(kept) >= 1 and len(calls) < len(PROMPTS)
    assert all(call.started < watch["since"] + 0.2 for call in calls), [c.started - watch["since"] for c in calls]
    logs = capfd.readouterr().out
    assert "refuses writes" in logs and "no further generation request is sent" in logs
    assert "could not be written" in logs and "To recover: restore write access" in logs
    paid_not_stored = len(calls) - len(kept)
    assert logs.count(f"{grok_simulator.image_base_url}/images/") >= paid_not_stored  # each named, with its URL
