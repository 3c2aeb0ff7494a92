"""The benchmark at a tiny size, so it cannot rot. Nothing here asserts a time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_smoke_run(tmp_path):
    report, raw = tmp_path / "RESULTS.md", tmp_path / "results.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--output", str(report), "--json", str(raw)],
        check=True, capture_output=True, cwd=ROOT, timeout=280,
    )  # fmt: skip
    results = json.loads(raw.read_text())
    (block,) = results["throughput"]
    assert set(block["rows"]) == {"provider", "naive", "openai"}
    for row in block["rows"].values():  # every contender really stored every image
        assert row["images"] == block["prompts"] * block["n"]
    assert [row["images"] for row in results["scaling"]] == [4, 8]
    assert results["deferrable"]["deferred"]["images"] == results["deferrable"]["sync"]["images"] == 4
    assert results["parse"]["airflow_provider_grok.operators.grok"]["heavy_added"] == []
    scale = results["scale"]["rows"]
    assert scale["scale"]["images"] == scale["scale-deferred"]["images"] == 50
    assert scale["scale"]["image_puts"] == 50 and scale["scale"]["record_puts"] == 150  # 3 receipt states
    assert scale["scale-deferred"]["event_bytes"] < 512
    text = report.read_text()
    assert "(c) openai SDK + boto3" in text and "DAG-parse cost" in text and "## Scale: 50 prompts" in text
