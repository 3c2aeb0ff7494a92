"""
Sync and deferred alike in every fault: the same scripted gateway and S3 outcomes run once in a worker's
threads and once in the trigger (dag.test() runs it inline), and must leave equal objects, equal manifests
(every prompt's status and message, every request's state) and end with the same error type and message.
Both executors run ``record/driver.py``'s loop, so a difference here is a rule living outside ``record/``.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from airflow_provider_grok.testing.s3_faults import S3FaultProxy
from tests.support import comparable, dag_source

PROMPTS = [f"parity prompt {i}" for i in range(4)]
# What legitimately differs between the runs: the gateway's ids (its counter runs on), our request ids
# (a new execution, and the sender's letter) and the prefix.
VOLATILE_IDS = re.compile(r"sim-\d+|t\d+-[0-9a-f]{6}-[sd]\d{5}")
ERROR_LINE = re.compile(r"^airflow_provider_grok\.exceptions\.(Grok\w+): (.*)$", re.MULTILINE)


def script(name: str, grok_simulator, proxy, s3, prefix: str) -> dict[str, str]:
    """Arrange scenario ``name`` on the simulator and the S3 proxy; the operator arguments it needs."""
    if name == "moderation":
        grok_simulator.moderate(prompt_contains="prompt 1")
    elif name == "cost cap":
        return {"max_cost_usd": "0.05"}  # $0.02 an image: the probe, one more, then the next could pass it
    elif name == "bad key mid-batch":
        grok_simulator.fail(401, prompt_contains="prompt 2")
    elif name == "storage refuses writes":
        proxy.deny_writes_to(r"/_grok/requests/t1-\w+-[sd]00003\.json")  # the third request's receipt
    return {}


def run(name: str, deferrable: bool, grok_simulator, s3, dag_runner, capfd) -> dict:  # noqa: PLR0917
    prefix = f"{name.replace(' ', '-')}-{'deferred' if deferrable else 'sync'}"
    with S3FaultProxy(s3.endpoint) as proxy:
        extra = {"endpoint_url": proxy.endpoint, "region_name": "us-east-1"}
        conn = json.dumps({"conn_type": "aws", "extra": extra})
        args = script(name, grok_simulator, proxy, s3, prefix)
        more = "".join(f", {k}={v}" for k, v in args.items())
        source = dag_source(
            f'GrokGenerateImagesOperator(task_id="gen", prompt={PROMPTS!r}, s3_bucket="{s3.bucket}", '
            f's3_key_prefix="{prefix}", max_concurrency=1, deferrable={deferrable}{more})'
        )
        capfd.readouterr()
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AIRFLOW_CONN_AWS_DEFAULT", conn)
            env.setenv("AIRFLOW__GROK__S3_OUTAGE_SECONDS", "1")
            result = dag_runner.run(source)
        logs = capfd.readouterr().out
    keys = s3.object_keys(prefix + "/")
    manifest = s3.manifest(prefix) if f"{prefix}/manifest.json" in keys else None
    errors = ERROR_LINE.findall(logs)

    def normal(text: str) -> str:
        return VOLATILE_IDS.sub("ID", text.replace(prefix, "PREFIX"))

    calls = sorted(c.prompt for c in grok_simulator.generation_calls)
    grok_simulator.reset()
    return {
        "state": result.state,
        "calls": calls,
        "objects": {k.removeprefix(prefix): s3.get(k) for k in keys if not k.endswith("manifest.json")},
        "manifest": None if manifest is None else json.loads(normal(json.dumps(comparable(manifest, prefix + "/")))),
        "error": (errors[-1][0], normal(errors[-1][1])) if errors else None,
    }


@pytest.mark.parametrize(
    ("name", "state", "error"),
    [
        ("success", "success", None),
        ("moderation", "success", None),
        ("cost cap", "failed", "GrokCostCapExceededError"),
        ("bad key mid-batch", "failed", "GrokAuthError"),
        ("storage refuses writes", "failed", "GrokStorageError"),
    ],
)
def test_sync_and_deferred_leave_the_same_record_and_end_alike(  # noqa: PLR0917
    grok_simulator, s3, dag_runner, capfd, name, state, error
):
    sync = run(name, False, grok_simulator, s3, dag_runner, capfd)
    time.sleep(0.1)
    deferred = run(name, True, grok_simulator, s3, dag_runner, capfd)

    assert sync["state"] == deferred["state"] == state
    assert sync["calls"] == deferred["calls"]
    assert sync["objects"] == deferred["objects"]  # byte for byte, receipts and plans aside (folded, deleted)
    assert sync["manifest"] == deferred["manifest"]
    assert sync["error"] == deferred["error"]
    assert (sync["error"] or (None,))[0] == error
    if name == "moderation":  # the filtered prompt's record says why it has no image
        (filtered,) = [p for p in sync["manifest"]["prompts"] if p["status"] == "filtered"]
        assert filtered["error"].startswith("content moderation refused every image")
    if name == "bad key mid-batch":  # the fatal fault stops the batch: the last prompt is never sent
        assert sync["calls"] == PROMPTS[:3]
        last = sync["manifest"]["prompts"][3]
        assert last["error"] == "not generated: an earlier request failed with GrokAuthError, which stops the batch"
    if name == "cost cap":
        assert len(sync["calls"]) == 2
        assert {p["error"] for p in sync["manifest"]["prompts"][2:]} == {
            "not generated: max_cost_usd stopped the batch before this request"
        }
    if name == "storage refuses writes":  # no receipt, no request, and none after it
        assert sync["calls"] == PROMPTS[:2]
        assert {p["error"][:42] for p in sync["manifest"]["prompts"][2:]} == {
            "not generated: storage refused a receipt, "
        }
