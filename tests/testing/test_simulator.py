"""The simulator itself: images of the requested shape, both dialects' refusals, the cap, the CLI."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
import urllib.error

import pytest
import requests
from PIL import Image

from airflow_provider_grok.testing import GrokSimulator
from airflow_provider_grok.testing.images import image_dimensions


def post(sim: GrokSimulator, body: dict, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key or sim.api_key}"}
    return requests.post(f"{sim.base_url}/v1/images/generations", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("aspect_ratio", "resolution", "size", "ratio", "megapixels"),
    [
        (None, None, None, 1.0, 1.05),
        ("16:9", "1k", None, 16 / 9, 1.05),
        ("9:16", "2k", None, 9 / 16, 4.19),
        ("19.5:9", "2k", None, 19.5 / 9, 4.19),
        (None, None, "1536x1024", 1.5, 1.57),
    ],
)
def test_images_have_the_requested_shape(aspect_ratio, resolution, size, ratio, megapixels):
    width, height = image_dimensions(aspect_ratio, resolution, size)
    assert width / height == pytest.approx(ratio, rel=0.02)
    assert width * height / 1e6 == pytest.approx(megapixels, rel=0.03)


@pytest.mark.parametrize(("image_format", "pil_format"), [("jpeg", "JPEG"), ("png", "PNG")])
def test_served_images_decode_with_pillow(image_format, pil_format):
    with GrokSimulator(image_format=image_format) as sim:
        body = {
            "model": "grok-imagine-image",
            "prompt": "x",
            "n": 2,
            "response_format": "b64_json",
            "aspect_ratio": "2:1",
            "resolution": "1k",
        }
        items = post(sim, body).json()["data"]
    images = [Image.open(io.BytesIO(base64.b64decode(i["b64_json"]))) for i in items]
    for image in images:
        image.load()
        assert image.format == pil_format and image.size == image_dimensions("2:1", "1k", None)
    assert items[0]["b64_json"] != items[1]["b64_json"]


def test_realistic_jpeg_sizes():
    with GrokSimulator() as sim:
        sizes = {}
        for resolution in ("1k", "2k"):
            body = {
                "model": "grok-imagine-image",
                "prompt": "x",
                "response_format": "b64_json",
                "resolution": resolution,
            }
            sizes[resolution] = len(base64.b64decode(post(sim, body).json()["data"][0]["b64_json"]))
    assert 0.1e6 < sizes["1k"] < 0.5e6 and 0.5e6 < sizes["2k"] < 2.5e6  # API.md's ranges


def test_openai_dialect_refuses_xai_fields_and_vice_versa():
    with GrokSimulator(dialect="openai") as sim:
        answer = post(sim, {"model": "grok-imagine", "prompt": "x", "aspect_ratio": "1:1"})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "aspect_ratio"
    with GrokSimulator(dialect="xai") as sim:
        answer = post(sim, {"model": "grok-imagine-image", "prompt": "x", "size": "1024x1024"})
        assert answer.status_code == 400 and answer.json()["error"] == "Argument not supported: size"


def test_concurrency_cap_answers_429_beyond_it():
    with GrokSimulator(latency=0.5, max_concurrent=2) as sim:
        from concurrent.futures import ThreadPoolExecutor

        body = {"model": "grok-imagine-image", "prompt": "x"}
        with ThreadPoolExecutor(4) as pool:
            statuses = sorted(r.status_code for r in pool.map(lambda _: post(sim, body), range(4)))
    assert statuses == [200, 200, 429, 429]
    assert sim.peak_concurrency == 2


def test_faults_can_target_one_prompt():
    with GrokSimulator() as sim:
        sim.fail(500, times=None, prompt_contains="bad")
        assert post(sim, {"model": "grok-imagine-image", "prompt": "good one"}).status_code == 200
        assert post(sim, {"model": "grok-imagine-image", "prompt": "a bad one"}).status_code == 500


def test_cli_serves_until_terminated(tmp_path):
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_grok.testing", "--dialect", "openai", "--ready-file", str(ready)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        conn = json.loads(info["connection"])
        answer = requests.post(
            f"{info['base_url']}/v1/images/generations",
            json={"model": "grok-imagine", "prompt": "x"},
            headers={"Authorization": f"Bearer {conn['password']}"},
            timeout=30,
        )
        assert answer.status_code == 200 and answer.json()["data"][0]["revised_prompt"]
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    assert "export AIRFLOW_CONN_GROK_DEFAULT=" in process.stdout.read()


def test_another_process_reads_the_call_log_and_injects_faults_over_http(tmp_path, monkeypatch):
    from airflow_provider_grok.hooks.grok import GrokHook
    from airflow_provider_grok.testing import SimulatorControl

    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_grok.testing", "--ready-file", str(ready)], stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["control_url"] == info["base_url"] + "/_simulator/"
        sim = SimulatorControl(info["base_url"])
        monkeypatch.setenv("AIRFLOW_CONN_GROK_CTL", info["connection"])
        sim.fail(503, times=1)
        sim.set_latency(0.3)

        started = time.monotonic()
        result = GrokHook("grok_ctl", retry_backoff=0.01).generate_images("a fox", n=3)

        assert time.monotonic() - started >= 0.6  # both attempts took the injected latency
        calls = sim.generation_calls()
        assert [c["status"] for c in calls] == [503, 200]
        assert calls[1]["request_id"] == result.request_ids[0] and calls[1]["body"]["n"] == 3
        assert sim.billing() == {
            "requests_billed": 1, "images_billed": 3, "cost_in_usd_ticks": 600_000_000, "cost_usd": 0.06
        }  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            sim.send("POST", "latency", {"seconds": "slow"})
        assert refused.value.code == 400
        sim.reset()
        assert sim.calls() == []
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
