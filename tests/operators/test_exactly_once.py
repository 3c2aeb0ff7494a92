"""
Exactly once, with real kills: a task process is SIGKILLed mid-batch and the next try resumes.

The worker runs the operator in a subprocess (``execute`` with a minimal task context) against the
simulator and moto over loopback; the test kills it with SIGKILL while requests are in flight, then runs
the next try to the end and checks from the simulator's billing and from S3 that no stored image was paid
for twice, that at most the requests in flight were repeated, and that the manifest tells the cost.
(`make e2e` proves the same on a real Airflow deployment.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from airflow_provider_grok.testing import GrokSimulator

PROMPTS = 8
CONCURRENCY = 2
WORKER = """
import sys
from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator
from airflow_provider_grok.testing.context import TaskContext

op = GrokGenerateImagesOperator(
    task_id="gen", prompt=[f"prompt number {i}" for i in range(PROMPTS)], s3_bucket=sys.argv[1],
    s3_key_prefix="kill", max_concurrency=CONCURRENCY,
)
op.execute(TaskContext(try_number=int(sys.argv[2])))
""".replace("PROMPTS", str(PROMPTS)).replace("CONCURRENCY", str(CONCURRENCY))


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def start_worker(sim: GrokSimulator, s3, try_number: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "AIRFLOW_CONN_GROK_DEFAULT": sim.connection_json(),
        "AIRFLOW_CONN_AWS_DEFAULT": s3.connection_json(),
    }
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, s3.bucket, str(try_number)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, seconds: float) -> tuple[int, str]:
    """Wait for a worker with a deadline, its stderr drained (a full pipe cannot block it); kill it if late."""
    try:
        _, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate(timeout=30)
        raise AssertionError(f"the worker did not finish in {seconds:.0f} s:\n{err[-3000:]}") from None
    return process.returncode, err


def images(s3) -> dict[str, bytes]:
    return {k: s3.get(k) for k in s3.object_keys("kill/") if k.endswith(".jpg")}


@pytest.mark.parametrize("stored_before_kill", [1, 3])
def test_sigkill_mid_batch_then_retry_pays_only_for_what_was_not_stored(s3, stored_before_kill):
    with GrokSimulator(latency=0.6) as sim:
        first = start_worker(sim, s3, 1)
        try:
            wait_for(lambda: len(images(s3)) >= stored_before_kill)
        finally:
            first.send_signal(signal.SIGKILL)
            finish(first, 30)
        kept = images(s3)  # what the killed try had stored, byte for byte
        wait_for(lambda: sim.in_flight == 0)  # the gateway finishes (and bills) what was in flight
        billed_by_first = sim.billing()["requests_billed"]
        in_flight_at_kill = billed_by_first - len({k.split("/")[1].split("-")[0] for k in kept})

        code, err = finish(start_worker(sim, s3, 2), 120)
        assert code == 0, err[-3000:]
        billing = sim.billing()

    assert s3.object_keys("kill/") == sorted([f"kill/{i}-0.jpg" for i in range(PROMPTS)] + ["kill/manifest.json"])
    after = images(s3)
    assert {key: after[key] for key in kept} == kept  # no stored image was generated again or overwritten
    retried = [c.prompt for c in sim.generation_calls[billed_by_first:]]
    assert not {f"prompt number {k.split('/')[1].split('-')[0]}" for k in kept} & set(retried)
    # Every prompt was paid for once, plus at most the requests that were in flight at the kill.
    assert billing["requests_billed"] == PROMPTS + in_flight_at_kill and in_flight_at_kill <= CONCURRENCY
    manifest = s3.manifest("kill")
    cost = manifest["cost"]
    assert manifest["status"] == "complete" and manifest["try_number"] == 2
    # The manifest knows every answered request; those in flight are named as unanswered, never hidden.
    # An unanswered request may or may not have reached the gateway before the kill: the bill lies between
    # the known cost and the known cost plus every unanswered request.
    unanswered = cost["requests_unanswered"]
    assert unanswered <= CONCURRENCY and cost["by_try"]["1"]["requests_unanswered"] == unanswered
    assert cost["usd"] - 1e-9 <= billing["cost_usd"] <= cost["usd"] + 0.02 * unanswered + 1e-9
    assert cost["this_try"]["requests"] == PROMPTS - len(kept)
    assert [r["state"] for r in manifest["requests"]].count("sent") == unanswered
    assert s3.object_keys("kill/_grok/") == []  # receipts folded into the manifest, then removed
    assert json.dumps(manifest).count(sim.api_key) == 0
