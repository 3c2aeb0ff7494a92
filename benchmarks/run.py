"""
`make bench`: every benchmark side by side in one run, written to benchmarks/RESULTS.md.

The Grok simulator (injected latency, a cap on concurrent calls, real JPEGs) and a moto S3 server run as
their own processes on loopback; each contender runs in a fresh process (benchmarks/contenders.py), so
its CPU time and peak RSS are its own. Numbers are compared with each other and with the physical limit
measured in the same run, never with fixed thresholds. `--quick` is a smoke run at a tiny size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HEAVY = ("boto3", "botocore", "requests", "httpx", "PIL")
PARSE_CODE = """
import json, sys, time
import airflow.sdk
from airflow.sdk import DAG, BaseOperator
before = set(sys.modules)
started = time.perf_counter()
import {module}
seconds = time.perf_counter() - started
print("PARSE=" + json.dumps({{"seconds": seconds, "added": sorted(set(sys.modules) - before)}}))
"""


METHOD = """## How this is measured

- The simulator (`python -m airflow_provider_grok.testing`, images pre-rendered so no contender pays for
  encoding) and a moto S3 server each run in their own process on loopback; all share the machine's cores.
- Each contender runs alone in a fresh process (`benchmarks/contenders.py`). Its modules are imported
  before the measured block; its clients (HTTP sessions, boto3) are created inside it, as in a task.
  Wall and client CPU cover that block; peak RSS is the whole process (the provider's includes Airflow).
- Physical limit: a client that only waits, with the gateway's cap always full: ceil(calls / cap) rounds of
  one call (latency plus transfer of the answer), measured against the same simulator in the same run.
- The provider stores more than the others: an S3-verified SHA-256 per object, metadata that makes each
  object its own record, three small receipt versions per request (before it is sent, when it is
  answered, when its images are stored) and a manifest when a try starts and ends; its S3 client comes
  from the amazon provider's S3Hook.
- Ratios compare contenders of the same run; nothing here is asserted by the test suite.
"""


@dataclass
class Servers:
    api: str
    key: str
    s3: str
    bucket: str
    latency: float
    cap: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def servers(latency: float, cap: int) -> Iterator[Servers]:
    """The simulator and a moto server, each in its own process; both stopped on exit."""
    import boto3

    workdir = Path(tempfile.mkdtemp(prefix="grok-bench-"))
    ready = workdir / "sim.json"
    s3_port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_grok.testing", "--latency", str(latency),
             "--max-concurrent", str(cap), "--prewarm", "1k", "2k", "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        ),
    ]  # fmt: skip
    try:
        s3 = f"http://127.0.0.1:{s3_port}"
        wait_for(s3)
        while not ready.exists():
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        boto3.client(
            "s3", endpoint_url=s3, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench"
        ).create_bucket(Bucket="bench")
        yield Servers(info["base_url"], json.loads(info["connection"])["password"], s3, "bench", latency, cap)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def contender(
    name: str, srv: Servers, *, prompts: int, n: int, resolution: str, concurrency: int = 8, rps: float | None = None
) -> dict[str, Any]:
    command = [
        sys.executable, str(HERE / "contenders.py"), name, "--api", srv.api, "--key", srv.key, "--s3", srv.s3,
        "--bucket", srv.bucket, "--prompts", str(prompts), "--n", str(n), "--resolution", resolution,
        "--concurrency", str(concurrency), *(["--rps", str(rps)] if rps else []),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT=")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"contender {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT="))
    return result


def call_seconds(srv: Servers, *, n: int, resolution: str, repeats: int = 3) -> float:
    """One generation call (latency + response transfer), median of a few: the unit of the physical limit."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = requests.post(
            f"{srv.api}/v1/images/generations",
            json={"model": "grok-imagine-image", "prompt": "calibration", "n": n, "response_format": "b64_json",
                  "resolution": resolution},
            headers={"Authorization": f"Bearer {srv.key}"},
            timeout=300,
        )  # fmt: skip
        response.raise_for_status()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def physical_limit(srv: Servers, calls: int, one_call: float) -> float:
    """A client that only waits, with the gateway's cap always full: ceil(calls / cap) rounds of one call."""
    return math.ceil(calls / srv.cap) * one_call


def throughput(srv: Servers, *, prompts: int, n: int, resolution: str) -> dict[str, Any]:
    one_call = call_seconds(srv, n=n, resolution=resolution)
    limit = physical_limit(srv, prompts, one_call)
    rows = {
        name: contender(name, srv, prompts=prompts, n=n, resolution=resolution)
        for name in ("provider", "naive", "openai")
    }
    for row in rows.values():
        row["vs_limit"] = row["wall_s"] / limit
        row["images_per_s"] = row["images"] / row["wall_s"]
        row["cpu_ms_per_image"] = 1000 * row["cpu_s"] / row["images"]
        row["mb_per_image"] = row["stored_bytes"] / row["images"] / 1e6
    return {
        "resolution": resolution,
        "prompts": prompts,
        "n": n,
        "one_call_s": one_call,
        "limit_s": limit,
        "rows": rows,
    }


def scaling(srv: Servers, sizes: list[int], *, n: int) -> list[dict[str, Any]]:
    one_call = call_seconds(srv, n=n, resolution="1k")
    out = []
    for size in sizes:
        row = contender("provider", srv, prompts=size, n=n, resolution="1k")
        row.update(prompts=size, limit_s=physical_limit(srv, size, one_call))
        out.append(row)
    return out


def deferrable(srv: Servers, *, prompts: int, n: int) -> dict[str, Any]:
    sync = contender("provider", srv, prompts=prompts, n=n, resolution="1k")
    deferred = contender("deferred", srv, prompts=prompts, n=n, resolution="1k")
    return {"prompts": prompts, "n": n, "sync": sync, "deferred": deferred}


def scale(srv: Servers, *, prompts: int) -> dict[str, Any]:
    """The operator at a large size, sync and deferred, one image per prompt: what grows with the batch."""
    rows = {
        name: contender(name, srv, prompts=prompts, n=1, resolution="1k", concurrency=srv.cap)
        for name in ("scale", "scale-deferred")
    }
    return {"prompts": prompts, "rows": rows}


def fill_the_budget(*, prompts: int, latency: float, rate: float) -> dict[str, Any]:
    """
    One deferred task against a gateway that allows ``rate`` request starts a second (429 beyond) at a real
    latency, with the connection's ``requests_per_second`` at the same rate and ``max_concurrency=prompts``:
    the rate-bound limit is prompts / rate + latency (the last start, then its answer).
    """
    from airflow_provider_grok.testing.control import SimulatorControl

    with servers(latency, prompts) as srv:
        SimulatorControl(srv.api).set_rate_limit(rate)
        row = contender("deferred", srv, prompts=prompts, n=1, resolution="1k", concurrency=prompts, rps=rate)
        rejected = sum(1 for call in SimulatorControl(srv.api).calls() if call.get("status") == 429)
    return {"prompts": prompts, "latency": latency, "rate": rate, "limit_s": prompts / rate + latency,
            "rejected": rejected, **row}  # fmt: skip


def parse_cost(runs: int) -> dict[str, Any]:
    out = {}
    for label, module in (
        ("airflow_provider_grok.operators.grok", "airflow_provider_grok.operators.grok"),
        ("airflow.providers.amazon.aws.operators.s3", "airflow.providers.amazon.aws.operators.s3"),
    ):
        samples, added = [], set()
        for _ in range(runs):
            done = subprocess.run(
                [sys.executable, "-c", PARSE_CODE.format(module=module)], capture_output=True, text=True, check=True
            )
            line = next(ln for ln in done.stdout.splitlines() if ln.startswith("PARSE="))
            data = json.loads(line.removeprefix("PARSE="))
            samples.append(data["seconds"])
            added = set(data["added"])
        heavy = sorted(m for m in HEAVY if m in added)
        out[label] = {"median_ms": 1000 * statistics.median(samples), "heavy_added": heavy, "modules_added": len(added)}
    return out


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    import airflow

    return (
        f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, Airflow {airflow.__version__}"
    )


def render(results: dict[str, Any], command: str) -> str:
    lines = ["# Benchmark results", "", f"Command: `{command}`  ", f"Machine: {results['machine']}  ",
             f"Run: {results['date']} (wall {results['total_s']:.0f} s)", ""]  # fmt: skip
    for block in results["throughput"]:
        lines += [
            f"## Throughput: {block['prompts']} prompts x n={block['n']} at {block['resolution']}",
            "",
            f"Gateway: {results['latency']} s per call, at most {results['cap']} calls at once. One call including "
            f"transfer: {block['one_call_s']:.2f} s, so the physical limit is {block['limit_s']:.2f} s "
            f"(ceil({block['prompts']}/{results['cap']}) rounds).",
            "",
            "| contender | wall s | x limit | images/s | client CPU ms/image | peak RSS MB | MB/image |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        names = {"provider": "(a) provider operator, max_concurrency=8", "naive": "(b) naive loop: requests + boto3",
                 "openai": "(c) openai SDK + boto3, 8 threads"}  # fmt: skip
        for key, row in block["rows"].items():
            lines.append(
                f"| {names[key]} | {row['wall_s']:.2f} | {row['vs_limit']:.2f} | {row['images_per_s']:.1f} | "
                f"{row['cpu_ms_per_image']:.1f} | {row['peak_rss_mb']:.0f} | {row['mb_per_image']:.2f} |"
            )
        provider, naive, sdk = (block["rows"][k]["wall_s"] for k in ("provider", "naive", "openai"))
        lines += ["", f"Provider vs naive: {naive / provider:.1f}x faster; vs openai SDK: {sdk / provider:.2f}x.", ""]
    lines += [
        "## Scaling (provider, 1k, n=2)",
        "",
        "| prompts | images | wall s | physical limit s | x limit | client CPU ms/image | peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["scaling"]:
        lines.append(
            f"| {row['prompts']} | {row['images']} | {row['wall_s']:.2f} | {row['limit_s']:.2f} | "
            f"{row['wall_s'] / row['limit_s']:.2f} | {1000 * row['cpu_s'] / row['images']:.1f} | "
            f"{row['peak_rss_mb']:.0f} |"
        )
    d = results["deferrable"]
    lines += [
        "",
        f"## Deferrable: worker-side time per task ({d['prompts']} prompts x n={d['n']}, "
        f"{results['deferrable_latency']} s latency)",
        "",
        "| mode | worker s | triggerer s | total wall s | event bytes |",
        "|---|---:|---:|---:|---:|",
        f"| sync | {d['sync']['wall_s']:.2f} | - | {d['sync']['wall_s']:.2f} | - |",
        f"| deferrable | {d['deferred']['worker_seconds']:.2f} | {d['deferred']['triggerer_seconds']:.2f} | "
        f"{d['deferred']['wall_s']:.2f} | {d['deferred']['event_bytes']:,} |",
        "",
        f"A deferred task holds a worker slot {d['sync']['wall_s'] / d['deferred']['worker_seconds']:.1f}x shorter.",
        "",
    ]
    big = results["scale"]
    lines += [
        f"## Scale: {big['prompts']:,} prompts x n=1 at 1k ({results['scale_latency']} s latency, "
        f"{results['scale_cap']} in flight)",
        "",
        "What grows with the batch besides the images: receipts and plans (`_grok/`, deleted once folded),",
        "the manifest (written when a try starts and when it ends), the XCom, and for the deferred path the",
        "trigger's kwargs (kept in the metadata DB) and its event.",
        "",
        "| mode | wall s | peak RSS MB | record bytes/image | record PUTs/image | manifest bytes (all writes) | "
        "XCom bytes | trigger kwargs bytes | event bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, row in (("sync", big["rows"]["scale"]), ("deferred", big["rows"]["scale-deferred"])):
        lines.append(
            f"| {mode} | {row['wall_s']:.1f} | {row['peak_rss_mb']:.0f} | {row['record_bytes'] / row['images']:.0f} | "
            f"{row['record_puts'] / row['images']:.1f} | {row['manifest_bytes']:,} ({row['manifest_puts']} PUTs) | "
            f"{row['xcom_bytes']:,} | {row.get('trigger_kwargs_bytes', '-')} | {row.get('event_bytes', '-')} |"
        )
    fill = results["fill"]
    lines += [
        "",
        f"## One deferred task fills the gateway's rate budget ({fill['prompts']} prompts, {fill['latency']:.0f} s "
        f"latency, {fill['rate']:.0f} starts/s)",
        "",
        f"The gateway answers 429 past {fill['rate']:.0f} request starts a second; the connection's "
        f"`requests_per_second` is {fill['rate']:.0f} and `max_concurrency={fill['prompts']}`. The rate-bound "
        f"limit is {fill['prompts']} / {fill['rate']:.0f} + {fill['latency']:.0f} = {fill['limit_s']:.0f} s.",
        "",
        "| wall s (trigger) | x limit | 429s from the gateway | images stored | peak RSS MB (worker + triggerer) |",
        "|---:|---:|---:|---:|---:|",
        f"| {fill['triggerer_seconds']:.1f} | {fill['triggerer_seconds'] / fill['limit_s']:.2f} | {fill['rejected']} | "
        f"{fill['images']} | {fill['peak_rss_mb']:.0f} |",
    ]
    lines += [
        "",
        "## DAG-parse cost: import time after `import airflow.sdk` "
        f"(median of {results['parse_runs']} fresh interpreters)",
        "",
        "| module | median ms | heavy modules it adds | modules it adds |",
        "|---|---:|---|---:|",
    ]
    for module, row in results["parse"].items():
        heavy = ", ".join(row["heavy_added"]) or "none"
        lines.append(f"| `{module}` | {row['median_ms']:.1f} | {heavy} | {row['modules_added']} |")
    lines += ["", f"Heavy modules checked: {', '.join(HEAVY)}.", "", METHOD]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    parser.add_argument("--output", type=Path, help="write the Markdown report here")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()
    quick = args.quick
    latency, cap = (0.05, 8) if quick else (1.0, 8)
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "latency": latency, "cap": cap}  # fmt: skip
    with servers(latency, cap) as srv:
        sizes = [(4, "1k")] if quick else [(32, "1k"), (32, "2k")]
        results["throughput"] = [throughput(srv, prompts=p, n=2, resolution=r) for p, r in sizes]
        results["scaling"] = scaling(srv, [2, 4] if quick else [8, 32, 128], n=2)
    results["deferrable_latency"] = 0.05 if quick else 5.0
    with servers(results["deferrable_latency"], cap) as srv:
        results["deferrable"] = deferrable(srv, prompts=2 if quick else 8, n=2)
    results["scale_latency"], results["scale_cap"] = 0.02, 16
    with servers(results["scale_latency"], results["scale_cap"]) as srv:
        results["scale"] = scale(srv, prompts=50 if quick else 10_000)
    results["fill"] = fill_the_budget(prompts=20 if quick else 300, latency=0.5 if quick else 20.0, rate=5.0)
    results["parse_runs"] = 2 if quick else 10
    results["parse"] = parse_cost(results["parse_runs"])
    results["total_s"] = time.monotonic() - started
    report = render(results, "make bench" if not quick else "python benchmarks/run.py --quick")
    print(report)
    if args.output:
        args.output.write_text(report)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
