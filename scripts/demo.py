"""
`make demo`: run example_grok_scheduled_content end to end with the real `airflow dags test`.

Without configuration it starts the built-in Grok simulator and a local S3 (moto server) on free
loopback ports, points `grok_default` and `aws_default` at them, uses a throwaway AIRFLOW_HOME with
SQLite, runs the DAG, copies the images and the gallery to ./demo-output/ and prints what was made.
Set AIRFLOW_CONN_GROK_DEFAULT to use a real gateway, GROK_DEMO_BUCKET (with your AWS credentials or
AIRFLOW_CONN_AWS_DEFAULT) to use real S3. Every process it starts is stopped, also on failure or Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "demo-output"
DAG_ID = "example_grok_scheduled_content"
EDIT_DAG_ID = "example_grok_edit_catalogue"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def local_s3(stack: ExitStack, env: dict[str, str]) -> str:
    """A moto S3 server on a free loopback port, with a bucket; returns the bucket name."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stack.callback(server.stop)
    endpoint = f"http://127.0.0.1:{port}"
    # Credentials exist only so botocore signs requests for the local server; nothing reaches AWS.
    env.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_DEFAULT_REGION="us-east-1")
    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_DEFAULT_REGION="us-east-1")
    env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
        {"conn_type": "aws", "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    )
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="grok-demo")
    return "grok-demo"


def run(command: list[str], env: dict[str, str], log: Path) -> None:
    """Run a command with its output in ``log``; stop it on Ctrl-C; show the log's end if it fails."""
    with log.open("a") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise SystemExit(f"`{' '.join(command[1:])}` failed with exit code {code}. Last lines of {log}:\n{tail}")


def download(env: dict[str, str], bucket: str, dag_prefix: str, target_dir: Path, up: int = 0) -> list[dict[str, Any]]:
    """
    Copy the folder of the newest gallery under ``dag_prefix`` (``up`` levels above it: a run's whole folder)
    to ``target_dir``; return the manifests in it.
    """
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = env.get(
        "AIRFLOW_CONN_AWS_DEFAULT", os.environ.get("AIRFLOW_CONN_AWS_DEFAULT", "")
    )
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    client = S3Hook(aws_conn_id="aws_default").get_conn()
    galleries = [
        item
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=dag_prefix + "/")
        for item in page.get("Contents", [])
        if item["Key"].endswith("/index.html")
    ]
    if not galleries:
        return []
    prefix = max(galleries, key=lambda item: item["LastModified"])["Key"].rsplit("/", 1 + up)[0]
    print(f"Images and gallery of this run: s3://{bucket}/{prefix}/")
    manifests = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            target = target_dir / item["Key"].removeprefix(prefix + "/")
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(target))
            if target.name == "manifest.json":
                manifests.append(json.loads(target.read_text()))
    return manifests


def main() -> int:
    started = time.monotonic()
    ds = datetime.now(UTC).strftime("%Y-%m-%d")
    shutil.rmtree(OUTPUT, ignore_errors=True)
    OUTPUT.mkdir()
    log = OUTPUT / "airflow.log"
    with ExitStack() as stack:
        home = stack.enter_context(tempfile.TemporaryDirectory(prefix="grok-demo-airflow-home-"))
        os.environ["AIRFLOW_HOME"] = home
        env = {
            **os.environ,
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
        if os.environ.get("AIRFLOW_CONN_GROK_DEFAULT"):
            gateway = "the gateway in AIRFLOW_CONN_GROK_DEFAULT"
        else:
            from airflow_provider_grok.testing import GrokSimulator

            sim = stack.enter_context(GrokSimulator(latency=1.0))
            env["AIRFLOW_CONN_GROK_DEFAULT"] = sim.connection_json()
            gateway = f"the built-in simulator at {sim.base_url}"
        if os.environ.get("GROK_DEMO_BUCKET"):
            bucket, storage = os.environ["GROK_DEMO_BUCKET"], "S3 (your AWS connection)"
        else:
            bucket, storage = local_s3(stack, env), "a local S3 (moto server)"
        env["GROK_DEMO_BUCKET"] = bucket
        print(f"Running {DAG_ID} for {ds} on {gateway}, storing in {storage}, bucket {bucket!r}.")
        print(f"Airflow's own log: {log}")
        run([AIRFLOW, "db", "migrate"], env, log)
        run([AIRFLOW, "dags", "test", DAG_ID, ds], env, log)
        manifests = download(env, bucket, f"grok/{DAG_ID}", OUTPUT)
        # Image edits: product shots restyled into two styles, with a before/after gallery.
        run([AIRFLOW, "dags", "test", EDIT_DAG_ID, ds], env, log)
        edits = download(env, bucket, f"grok/{EDIT_DAG_ID}", OUTPUT / "edits", up=1)

    rows = [
        (image["prompt"], image["s3_uri"], image["size_bytes"])
        for manifest in sorted(manifests, key=lambda m: m["map_index"])
        for record in manifest["prompts"]
        for image in record["images"]
    ]
    width = max(len(p) for p, _, _ in rows) if rows else 10
    print(f"\n{'prompt':<{min(width, 60)}}  {'size':>10}  S3 URI")
    for prompt, uri, size in rows:
        print(f"{prompt[:60]:<{min(width, 60)}}  {size:>10,}  {uri}")
    gallery = OUTPUT / "index.html"
    edit_gallery = OUTPUT / "edits" / "restyle" / "index.html"
    edited = sum(len(r["images"]) for m in edits if m["task_id"] == "restyle" for r in m["prompts"])
    print(f"\n{len(rows)} images in {OUTPUT}/ in {time.monotonic() - started:.0f} s. Open the gallery: {gallery}")
    print(f"{edited} restyled product shots; before/after gallery: {edit_gallery}")
    return 0 if rows and gallery.exists() and edited and edit_gallery.exists() else 1


if __name__ == "__main__":
    sys.exit(main())
