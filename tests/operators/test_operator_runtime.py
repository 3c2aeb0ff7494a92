"""The operator driven directly (no scheduler): on_kill, OpenLineage facets, and bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator
from airflow_provider_grok.testing import GrokSimulator
from tests.support import RuntimeContext

RSS_PROBE = Path(__file__).with_name("rss_probe.py")


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
        while sim.peak_concurrency == 0:  # wait until requests are really in flight
            time.sleep(0.01)
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
        with pytest.raises(Exception, match="prompts are incomplete"):
            op.execute(RuntimeContext())
    assert sim.generation_calls == []


def test_openlineage_output_dataset(grok_simulator, s3):
    op = GrokGenerateImagesOperator(task_id="gen", prompt="x", s3_bucket=s3.bucket, s3_key_prefix="lineage/a")
    assert op.get_openlineage_facets_on_complete(None).outputs == []  # nothing stored yet
    op.execute(RuntimeContext())
    lineage = op.get_openlineage_facets_on_complete(None)
    (dataset,) = lineage.outputs
    assert (dataset.namespace, dataset.name) == (f"s3://{s3.bucket}", "lineage/a")


def run_probe(sim_url_file: Path, s3, prompts: int) -> dict:
    out = subprocess.run(
        [sys.executable, str(RSS_PROBE), str(sim_url_file), s3.endpoint, s3.bucket, str(prompts)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_memory_stays_bounded_for_40_prompts_of_four_2k_images(s3, tmp_path):
    """Peak RSS of the task process is flat in the number of prompts (the simulator runs in its own process)."""
    ready = tmp_path / "sim.json"
    sim = subprocess.Popen([sys.executable, "-m", "airflow_provider_grok.testing", "--ready-file", str(ready)])
    try:
        while not ready.exists():
            time.sleep(0.05)
        small = run_probe(ready, s3, 4)
        large = run_probe(ready, s3, 40)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    print(
        f"peak RSS: 4 prompts {small['peak_rss_mb']:.0f} MB, 40 prompts {large['peak_rss_mb']:.0f} MB; "
        f"stored {large['stored_mb']:.0f} MB"
    )
    assert small["images"] == 16 and large["images"] == 160
    assert large["stored_mb"] > 150  # 160 images of about 1.5 MB really passed through
    # 40 prompts move ten times the data of 4; memory must not follow (in-flight work only).
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 0.25 * large["stored_mb"]
