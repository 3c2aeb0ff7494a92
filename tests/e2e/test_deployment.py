"""
Exactly once where users run it: a real deployment, REST-triggered runs with no logical date, and kills.

The simulator's call log (over its HTTP control API) says what was paid; S3 (moto) says what was stored;
the manifest says what the provider claims. Each kill scenario prints its POST counts.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from airflow_provider_grok.manifest import default_prefix
from airflow_provider_grok.testing import SimulatorControl
from tests.e2e.deployment import Deployment, wait_for

pytestmark = pytest.mark.e2e
PRICE = 0.02  # the simulator bills $0.02 an image


@pytest.fixture
def sim(deployment: Deployment) -> SimulatorControl:
    control = SimulatorControl(deployment.sim_url)
    control.set_latency(0)
    return control


def posts(sim: SimulatorControl, marker: str) -> list[dict[str, Any]]:
    return [c for c in sim.generation_calls() if marker in (c["prompt"] or "")]


def images(deployment: Deployment, prefix: str) -> dict[str, bytes]:
    return {k: deployment.read(k) for k in deployment.keys(prefix + "/") if k.endswith(".jpg")}


def explain(deployment: Deployment, dag_id: str, run_id: str) -> str:
    tis = deployment.task_instances(dag_id, run_id)
    states = [(t["task_id"], t["map_index"], t["state"], t["try_number"]) for t in tis]
    return f"{states}\n--- scheduler ---\n{deployment.log_tail('scheduler')}"


def check_exactly_once(
    deployment: Deployment, sim: SimulatorControl, *, marker: str, prefix: str, prompts: int, kept: dict[str, bytes]
) -> dict[str, Any]:
    """What every kill scenario must show; returns the counts it printed."""
    calls = posts(sim, marker)
    billed = [c for c in calls if c["billed_ticks"]]
    per_prompt = {i: sum(1 for c in billed if c["prompt"].endswith(f" {i}")) for i in range(prompts)}
    kept_prompts = {int(k.rsplit("/", 1)[1].split("-")[0]) for k in kept}
    keys = deployment.keys(prefix + "/")
    manifest = deployment.manifest(prefix)
    cost = manifest["cost"]
    counts = {
        "prompts": prompts,
        "stored_before_kill": len(kept),
        "posts": len(calls),
        "posts_billed": len(billed),
        "repeated": len(billed) - prompts,
        "billed_usd": round(sum(c["billed_ticks"] for c in billed) / 1e10, 4),
        "manifest_usd": cost["usd"],
        "manifest_unanswered": cost["requests_unanswered"],
        "manifest_requests": cost["requests"],
    }
    print(f"\n{marker}: {json.dumps(counts)}")

    # Every prompt has exactly one object; the receipts were folded into the manifest and removed.
    assert sorted(keys) == sorted([f"{prefix}/{i}-0.jpg" for i in range(prompts)] + [f"{prefix}/manifest.json"])
    # No stored image was paid for twice: its prompt was never requested again and its bytes are unchanged.
    assert all(per_prompt[i] == 1 for i in kept_prompts), per_prompt
    assert {k: deployment.read(k) for k in kept} == kept
    # At most the requests in flight (max_concurrency = 2) were repeated.
    assert 0 <= counts["repeated"] <= 2, counts
    # The manifest records every request the gateway saw, and its cost is what was billed, the in-flight
    # ones named: an unanswered request may not have reached the gateway, so the bill lies between the
    # known cost and the known cost plus every unanswered request.
    assert len(calls) <= cost["requests"] <= len(calls) + cost["requests_unanswered"]
    assert cost["usd"] - 1e-9 <= counts["billed_usd"] <= cost["usd"] + PRICE * cost["requests_unanswered"] + 1e-9
    assert cost["requests_unanswered"] <= 2
    assert manifest["status"] == "complete"
    return counts


def test_examples_succeed_when_triggered_with_no_logical_date(deployment: Deployment, sim: SimulatorControl) -> None:
    dags = ("example_grok_scheduled_content", "example_grok_deferrable", "example_grok_hook_taskflow")
    runs = {dag: deployment.trigger(dag) for dag in dags}
    for dag, run in runs.items():
        assert deployment.wait_run(dag, run) == "success", explain(deployment, dag, run)

    content_run = runs["example_grok_scheduled_content"]
    base = default_prefix("example_grok_scheduled_content", content_run, "generate")
    assert b"<img" in deployment.read(f"{base}/index.html")
    events = deployment.rest(
        "GET",
        "assets/events",
        params={"source_dag_id": "example_grok_scheduled_content", "source_run_id": content_run},
    )["asset_events"]
    assert len(events) == 1, events  # once per run, from the gallery task, after everything was stored
    (event,) = events
    assert event["source_task_id"] == "build_gallery" and event["extra"]["images"] == 6
    assert event["extra"]["cost_usd"] == pytest.approx(6 * PRICE)

    def consumer_done() -> bool:
        runs = deployment.rest("GET", "dags/example_grok_asset_consumer/dagRuns")["dag_runs"]
        return any(r["run_type"] == "asset_triggered" and r["state"] == "success" for r in runs)

    wait_for("the asset-triggered consumer run", consumer_done, 120, every=1)


def test_worker_sigkill_mid_batch_pays_only_for_images_not_stored(
    deployment: Deployment, sim: SimulatorControl
) -> None:
    dag = "e2e_grok_kill_worker"
    sim.set_latency(2.0)
    run = deployment.trigger(dag)
    prefix = default_prefix(dag, run, "generate")
    wait_for("two images stored by try 1", lambda: len(deployment.keys(prefix + "/")) >= 3, 180)  # + receipts
    wait_for("two images stored by try 1", lambda: len(images(deployment, prefix)) >= 2, 60, every=0.1)
    ti = deployment.task_instance(dag, run, "generate")
    assert ti["state"] == "running" and ti["try_number"] == 1 and ti["pid"], ti
    kept = images(deployment, prefix)
    os.kill(ti["pid"], signal.SIGKILL)  # the task process itself, mid-batch, two requests in flight

    assert deployment.wait_run(dag, run) == "success", explain(deployment, dag, run)
    ti = deployment.task_instance(dag, run, "generate")
    assert ti["try_number"] == 2  # Airflow retried the killed try
    counts = check_exactly_once(deployment, sim, marker="kill-worker", prefix=prefix, prompts=8, kept=kept)
    assert counts["stored_before_kill"] >= 2


def test_triggerer_restart_mid_batch_repeats_only_requests_in_flight(
    deployment: Deployment, sim: SimulatorControl
) -> None:
    dag = "e2e_grok_kill_triggerer"
    sim.set_latency(2.0)
    run = deployment.trigger(dag)
    prefix = default_prefix(dag, run, "generate")
    wait_for("the task to defer", lambda: deployment.task_instance(dag, run, "generate")["state"] == "deferred", 180)
    wait_for("two images stored by the trigger", lambda: len(images(deployment, prefix)) >= 2, 120, every=0.1)
    kept = images(deployment, prefix)
    deployment.kill("triggerer")  # SIGKILL, as a crash or an OOM kill does
    deployment.start_triggerer()

    assert deployment.wait_run(dag, run) == "success", explain(deployment, dag, run)
    ti = deployment.task_instance(dag, run, "generate")
    assert ti["try_number"] == 1  # the new triggerer resumed the same try: no Airflow retry was needed
    counts = check_exactly_once(deployment, sim, marker="kill-triggerer", prefix=prefix, prompts=6, kept=kept)
    assert counts["stored_before_kill"] >= 2


def test_a_second_run_on_a_fixed_prefix_is_refused_and_pays_nothing(
    deployment: Deployment, sim: SimulatorControl
) -> None:
    dag = "e2e_grok_shared_prefix"
    first = deployment.trigger(dag)
    assert deployment.wait_run(dag, first) == "success", explain(deployment, dag, first)
    before = deployment.manifest("e2e/shared")
    second = deployment.trigger(dag)

    assert deployment.wait_run(dag, second) == "failed"
    ti = deployment.task_instance(dag, second, "generate")
    assert ti["try_number"] == 1  # refused without retries: no retry can fix it
    assert len(posts(sim, "shared-prefix")) == 1
    assert deployment.manifest("e2e/shared") == before  # not adopted, not rewritten


def test_test_connection_names_unknown_extras(deployment: Deployment) -> None:
    connection = json.loads(deployment.sim_connection)
    answer = deployment.rest(
        "POST",
        "connections/test",
        json={
            "connection_id": "grok_typo",
            "conn_type": "grok",
            "host": connection["host"],
            "password": connection["password"],
            "extra": json.dumps({"max_retry": 5}),
        },
    )
    assert answer["status"] is False
    assert "'max_retry' (did you mean 'max_retries'?)" in answer["message"]
    assert connection["password"] not in answer["message"]
