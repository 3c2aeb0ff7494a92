"""
One benchmark contender, run alone in this fresh process; prints one JSON line with its measurements.

    python benchmarks/contenders.py CONTENDER --api URL --key KEY --s3 URL --bucket B --prompts 32 --n 2 ...

Contenders (each turns the same prompts into images stored in the same S3):
  provider  GrokGenerateImagesOperator.execute, max_concurrency=--concurrency
  naive     what a user writes in a PythonOperator: a loop of requests.post, base64 decode, boto3 put_object
  openai    the openai SDK (images.generate with base_url and extra_body) + boto3 in a ThreadPoolExecutor
  deferred  the operator with deferrable=True: execute (until it defers), the trigger, execute_complete;
            reports the worker-side seconds separately from the triggerer's
  scale, scale-deferred
            the operator (sync or deferred) at a large size, reporting what it writes besides the images
            (receipts, plans and manifests: bytes and PUTs per image), its XCom, trigger kwargs and event
Every contender imports its modules before the measured block and creates its clients (HTTP sessions,
boto3) inside it, as a task does. CPU and wall time cover that block; peak RSS is the whole process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MODEL = "grok-imagine-image"


def prompts(count: int) -> list[str]:
    return [f"Catalogue illustration number {i}: a ceramic vase with a seasonal pattern" for i in range(count)]


def s3_client(args: argparse.Namespace) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=args.s3, region_name="us-east-1")


def connect_airflow(args: argparse.Namespace) -> None:
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="grok-bench-"))
    extra: dict[str, Any] = {"max_retries": 3}
    if args.rps:
        extra["requests_per_second"] = args.rps
    os.environ["AIRFLOW_CONN_GROK_DEFAULT"] = json.dumps(
        {"conn_type": "grok", "host": args.api, "password": args.key, "extra": extra}
    )
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({"conn_type": "aws", "extra": {"endpoint_url": args.s3}})


def operator(args: argparse.Namespace, *, deferrable: bool) -> Any:
    from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator

    return GrokGenerateImagesOperator(
        task_id="bench",
        prompt=prompts(args.prompts),
        n=args.n,
        resolution=args.resolution,
        s3_bucket=args.bucket,
        s3_key_prefix=f"bench/{args.contender}/{uuid.uuid4().hex}",
        max_concurrency=args.concurrency,
        deferrable=deferrable,
    )


def preload_provider() -> None:
    """Import what execute() imports lazily, so the measured block holds no imports (as for the others)."""
    import airflow_provider_grok.operators._pipeline
    import airflow_provider_grok.triggers.grok  # noqa: F401


def run_provider(args: argparse.Namespace) -> dict[str, Any]:
    from airflow_provider_grok.testing.context import TaskContext

    connect_airflow(args)
    preload_provider()
    op = operator(args, deferrable=False)
    with Measure() as measure:
        stored = op.execute(TaskContext())
    return measure.report(images=len(stored), stored_bytes=sum(i["size_bytes"] for i in stored))


def run_naive(args: argparse.Namespace) -> dict[str, Any]:
    import boto3  # noqa: F401
    import requests

    prefix = f"bench/naive/{uuid.uuid4().hex}"
    images = stored_bytes = 0
    with Measure() as measure:
        s3 = s3_client(args)
        for p, prompt in enumerate(prompts(args.prompts)):
            body = {"model": MODEL, "prompt": prompt, "n": args.n, "response_format": "b64_json",
                    "resolution": args.resolution}  # fmt: skip
            response = requests.post(
                f"{args.api}/v1/images/generations",
                json=body,
                headers={"Authorization": f"Bearer {args.key}"},
                timeout=300,
            )
            response.raise_for_status()
            for i, item in enumerate(response.json()["data"]):
                data = base64.b64decode(item["b64_json"])
                s3.put_object(Bucket=args.bucket, Key=f"{prefix}/{p}-{i}.jpg", Body=data, ContentType="image/jpeg")
                images, stored_bytes = images + 1, stored_bytes + len(data)
    return measure.report(images=images, stored_bytes=stored_bytes)


def run_openai(args: argparse.Namespace) -> dict[str, Any]:
    import boto3  # noqa: F401
    from openai import OpenAI

    prefix = f"bench/openai/{uuid.uuid4().hex}"
    clients: dict[str, Any] = {}

    def one(p: int, prompt: str) -> tuple[int, int]:
        client, s3 = clients["openai"], clients["s3"]
        response = client.images.generate(
            model=MODEL, prompt=prompt, n=args.n, response_format="b64_json",
            extra_body={"resolution": args.resolution},
        )  # fmt: skip
        count = size = 0
        for i, item in enumerate(response.data or []):
            data = base64.b64decode(item.b64_json or "")
            s3.put_object(Bucket=args.bucket, Key=f"{prefix}/{p}-{i}.jpg", Body=data, ContentType="image/jpeg")
            count, size = count + 1, size + len(data)
        return count, size

    with Measure() as measure, ThreadPoolExecutor(args.concurrency) as pool:
        clients["openai"] = OpenAI(base_url=f"{args.api}/v1", api_key=args.key, max_retries=3, timeout=300)
        clients["s3"] = s3_client(args)
        results = list(pool.map(one, *zip(*enumerate(prompts(args.prompts)), strict=True)))
    return measure.report(images=sum(c for c, _ in results), stored_bytes=sum(s for _, s in results))


def run_deferred(args: argparse.Namespace) -> dict[str, Any]:
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_grok.testing.context import TaskContext

    connect_airflow(args)
    preload_provider()
    op = operator(args, deferrable=True)
    context = TaskContext()
    with Measure() as measure:
        worker_started = time.perf_counter()
        try:
            op.execute(context)
            raise RuntimeError("the operator did not defer")
        except TaskDeferred as deferred:
            trigger = deferred.trigger
        worker_seconds = time.perf_counter() - worker_started

        triggerer_started = time.perf_counter()

        async def first_event() -> dict[str, Any]:
            async for event in trigger.run():
                return event.payload
            raise RuntimeError("the trigger yielded nothing")

        event = asyncio.run(first_event())
        triggerer_seconds = time.perf_counter() - triggerer_started

        resumed = time.perf_counter()
        stored = op.execute_complete(context, event)
        worker_seconds += time.perf_counter() - resumed
    return measure.report(
        images=len(stored),
        stored_bytes=sum(i["size_bytes"] for i in stored),
        worker_seconds=worker_seconds,
        triggerer_seconds=triggerer_seconds,
        event_bytes=len(json.dumps(event)),
    )


def count_s3_writes() -> dict[str, int]:
    """
    Count what the provider writes to S3, by kind. A wrapper that calls through to the real upload: a
    measurement of a benchmark run, not a test double.
    """
    from airflow_provider_grok.storage import S3ImageStore

    written = {"image_bytes": 0, "image_puts": 0, "record_bytes": 0, "record_puts": 0, "manifest_bytes": 0,
               "manifest_puts": 0}  # fmt: skip
    upload = S3ImageStore._put

    def counting(self: Any, key: str, data: bytes, *args: Any, **kwargs: Any) -> str:
        kind = "manifest" if key.endswith("/manifest.json") else "record" if "/_grok/" in key else "image"
        written[f"{kind}_bytes"] += len(data)
        written[f"{kind}_puts"] += 1
        return upload(self, key, data, *args, **kwargs)

    S3ImageStore._put = counting  # type: ignore[method-assign]
    return written


def run_scale(args: argparse.Namespace, *, deferrable: bool = False) -> dict[str, Any]:
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_grok.testing.context import TaskContext

    connect_airflow(args)
    preload_provider()
    written = count_s3_writes()
    op = operator(args, deferrable=deferrable)
    context = TaskContext()
    extra: dict[str, Any] = {}
    with Measure() as measure:
        if deferrable:
            try:
                op.execute(context)
                raise RuntimeError("the operator did not defer")
            except TaskDeferred as deferred:
                extra["trigger_kwargs_bytes"] = len(json.dumps(deferred.trigger.serialize()[1]))
                trigger = deferred.trigger

            async def first_event() -> dict[str, Any]:
                async for event in trigger.run():
                    return event.payload
                raise RuntimeError("the trigger yielded nothing")

            event = asyncio.run(first_event())
            extra["event_bytes"] = len(json.dumps(event))
            stored = op.execute_complete(context, event)
        else:
            stored = op.execute(context)
    images = stored["images"] if isinstance(stored, dict) else len(stored)
    return measure.report(
        images=images, stored_bytes=written["image_bytes"], xcom_bytes=len(json.dumps(stored)), **written, **extra
    )


class Measure:
    """Wall time and this process's CPU time over a block; peak RSS of the process."""

    def __enter__(self) -> Measure:
        self.cpu = _cpu()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = _cpu() - self.cpu

    def report(self, **values: Any) -> dict[str, Any]:
        return {"wall_s": self.wall, "cpu_s": self.cpu, "peak_rss_mb": peak_rss_mb(), **values}


def peak_rss_mb() -> float:
    """
    This process's own peak RSS. On Linux ``ru_maxrss`` survives exec, so a child of a large parent (pytest
    holding a moto server's objects) would report the parent's size; VmHWM belongs to this address space.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kilobytes = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return kilobytes / 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


CONTENDERS = {
    "provider": run_provider,
    "naive": run_naive,
    "openai": run_openai,
    "deferred": run_deferred,
    "scale": run_scale,
    "scale-deferred": lambda args: run_scale(args, deferrable=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("contender", choices=CONTENDERS)
    parser.add_argument("--api", required=True, help="simulator base URL")
    parser.add_argument("--key", required=True)
    parser.add_argument("--s3", required=True, help="S3 endpoint URL")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--resolution", default="1k")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rps", type=float, default=None, help="the connection's requests_per_second")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    result = CONTENDERS[args.contender](args)
    print("RESULT=" + json.dumps({"contender": args.contender, **result}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
