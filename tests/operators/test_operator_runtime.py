"""The operator driven directly (no scheduler): on_kill, OpenLineage facets, and bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from airflow_provider_grok.exceptions import GrokIncompleteError
from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator
from airflow_provider_grok.testing import GrokSimulator
from airflow_provider_grok.testing.context import TaskContext as RuntimeContext
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
CONTENDERS = ROOT / "benchmarks" / "contenders.py"


def test_on_kill_stops_work_in_flight(s3, monkeypatch):
    with GrokSimulator(latency=1.0) as sim:
        monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", sim.connection_json(max_retries=0))
        op = GrokGenerateImagesOperator(
            task_id="gen",
            prompt=[f"p{i}" for i in range(12)],
            s3_bucket=s3.bucket,
            s3_key_prefix="kill",
            max_concurrency=2,
        )
        outcome: dict[str, BaseException] = {}

        def run() -> None:
            try:
                op.execute(RuntimeContext())
            except BaseException as err:  # the task fails: that is the point
                outcome["error"] = err

        worker = threading.Thread(target=run)
        worker.start()
        wait_until("requests in flight", lambda: sim.peak_concurrency > 0)
        op.on_kill()
        worker.join(timeout=60)

    assert not worker.is_alive()
    assert len(sim.generation_calls) <= 4  # nothing new was started after the kill (twelve were queued)
    manifest = s3.manifest("kill")
    assert manifest["status"] == "failed"
    assert sum(r["error"] is not None and "not attempted" in r["error"] for r in manifest["prompts"]) >= 8
    assert "prompts are incomplete" in str(outcome["error"])


def test_kill_before_work_starts_still_stops_it(s3, monkeypatch):
    with GrokSimulator() as sim:
        monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", sim.connection_json())
        op = GrokGenerateImagesOperator(task_id="gen", prompt=["a", "b"], s3_bucket=s3.bucket, s3_key_prefix="early")
        op.on_kill()  # e.g. SIGTERM while the task was still reading its connections
        with pytest.raises(GrokIncompleteError, match="prompts are incomplete"):
            op.execute(RuntimeContext())
    assert sim.generation_calls == []


def test_openlineage_output_dataset(grok_simulator, s3):
    op = GrokGenerateImagesOperator(task_id="gen", prompt="x", s3_bucket=s3.bucket, s3_key_prefix="lineage/a")
    assert op.get_openlineage_facets_on_complete(None).outputs == []  # nothing stored yet
    op.execute(RuntimeContext())
    lineage = op.get_openlineage_facets_on_complete(None)
    (dataset,) = lineage.outputs
    assert (dataset.namespace, dataset.name) == (f"s3://{s3.bucket}", "lineage/a")


def run_provider_process(sim_ready: Path, s3, prompts: int) -> dict:
    """The benchmark's provider contender in a fresh process: 4 images of 2k per prompt."""
    info = json.loads(sim_ready.read_text())
    key = json.loads(info["connection"])["password"]
    command = [sys.executable, str(CONTENDERS), "provider", "--api", info["base_url"], "--key", key, "--s3",
               s3.endpoint, "--bucket", s3.bucket, "--prompts", str(prompts), "--n", "4", "--resolution", "2k",
               "--concurrency", "4"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=240).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT="))
    result = json.loads(line.removeprefix("RESULT="))
    result["stored_mb"] = result["stored_bytes"] / 1e6
    return result


def test_memory_stays_bounded_for_40_prompts_of_four_2k_images(s3, tmp_path):
    """
    Peak RSS of the task process does not follow the amount of data (the simulator runs in its own process).

    Memory is bounded by the answers in flight and waiting for storage (2 x max_concurrency), so past the
    first rounds it is flat: 80 prompts move twice the data of 40 in about the same memory.
    """
    ready = tmp_path / "sim.json"
    sim = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_grok.testing", "--prewarm", "2k", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until("the simulator", ready.exists, 60)
        forty = run_provider_process(ready, s3, 40)
        eighty = run_provider_process(ready, s3, 80)
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait(timeout=10)
    print(
        f"peak RSS: 40 prompts {forty['peak_rss_mb']:.0f} MB ({forty['stored_mb']:.0f} MB stored), "
        f"80 prompts {eighty['peak_rss_mb']:.0f} MB ({eighty['stored_mb']:.0f} MB stored)"
    )
    assert forty["images"] == 160 and eighty["images"] == 320
    assert forty["stored_mb"] > 150  # 160 images of about 1.1 MB really passed through
    extra_data = eighty["stored_mb"] - forty["stored_mb"]
    assert eighty["peak_rss_mb"] - forty["peak_rss_mb"] < 0.2 * extra_data
