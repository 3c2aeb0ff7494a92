"""
The fleet, where users run it: CeleryExecutor with two workers (own homes, temp folders and hostnames),
a triggerer, one API key. Measured at the gateway (the simulator's call log over its control API) and
printed next to what the manifests say.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_grok.record.keys import default_prefix
from airflow_provider_grok.testing import SimulatorControl, busiest_second
from tests.e2e.checks import PRICE, check_exactly_once, explain, images, posts
from tests.e2e.deployment import CELERY_WORKERS, ROOT, Deployment, wait_for

pytestmark = pytest.mark.e2e
FLEET = "e2e_grok_fleet"
MODES, TASKS, PROMPTS = ("sync", "deferred"), 3, 4  # as in dags/e2e_grok_fleet.py


@pytest.fixture
def sim(celery_deployment: Deployment) -> SimulatorControl:
    control = SimulatorControl(celery_deployment.sim_url)
    control.reset()
    control.set_latency(0)
    control.set_rate_limit(None)
    return control


def test_the_deployment_runs_the_provider_from_its_wheel(celery_deployment: Deployment) -> None:
    where = celery_deployment.imported_provider()
    assert "site-packages" in where and not where.startswith(str(ROOT / "airflow_provider_grok")), where


def run_fleet(deployment: Deployment, sim: SimulatorControl, grok_conn: str) -> dict[str, Any]:
    """Run the fleet DAG on one connection; what the gateway saw and what the manifests say."""
    run = deployment.trigger(FLEET, {"grok_conn": grok_conn})
    state = deployment.wait_run(FLEET, run, seconds=300)
    calls = posts(sim, "fleet ")
    manifests = [
        deployment.manifest(f"{default_prefix(FLEET, run, mode)}/map-{i}") for mode in MODES for i in range(TASKS)
    ]
    seen = {
        "connection": grok_conn,
        "run": state,
        "gateway_requests": len(calls),
        "gateway_429s": sum(1 for c in calls if c["status"] == 429),
        "busiest_1s_window": busiest_second([c["started"] for c in calls]),
        "gateway_billed_usd": round(sum(c["billed_ticks"] for c in calls) / 1e10, 4),
        "manifest_requests": sum(m["cost"]["requests"] for m in manifests),
        "manifest_images": sum(m["summary"]["images_stored"] for m in manifests),
        "manifest_usd": round(sum(m["cost"]["usd"] or 0 for m in manifests), 4),
        "hosts": sorted({t["hostname"] for t in deployment.task_instances(FLEET, run)}),
    }
    print(f"\nfleet on {grok_conn}: {json.dumps(seen)}")
    return seen


def test_one_budget_holds_the_gateways_rate_limit_for_the_whole_fleet(
    celery_deployment: Deployment, sim: SimulatorControl
) -> None:
    sim.set_rate_limit(4)  # the gateway allows 4 starts a second, as xAI's per-model limit does
    sim.set_latency(0.5)
    shared = run_fleet(celery_deployment, sim, "grok_fleet_shared")
    sim.reset()
    alone = run_fleet(celery_deployment, sim, "grok_fleet_local")

    # With redis_conn_id: 2 requests/s for the 6 tasks together, spaced, on both workers and the triggerer.
    assert shared["run"] == "success"
    assert shared["gateway_429s"] == 0 and shared["busiest_1s_window"] <= 3, shared
    assert shared["gateway_requests"] == shared["manifest_requests"] == 24
    assert shared["manifest_images"] == 24 and shared["manifest_usd"] == pytest.approx(shared["gateway_billed_usd"])
    assert set(CELERY_WORKERS) <= set(shared["hosts"]), shared["hosts"]
    # Without it, each process keeps its own 2/s: together they pass the gateway's limit and draw 429s.
    assert alone["busiest_1s_window"] > 4 and alone["gateway_429s"] > 0, alone


def test_the_money_cap_holds_in_sync_and_deferrable_mode(celery_deployment: Deployment, sim: SimulatorControl) -> None:
    dag = "e2e_grok_cost_cap"
    run = celery_deployment.trigger(dag)
    assert celery_deployment.wait_run(dag, run) == "failed"  # both tasks stop at their cap
    for mode in MODES:
        calls = posts(sim, f"cap-{mode} ")
        billed = sum(c["billed_ticks"] for c in calls) / 1e10
        manifest = celery_deployment.manifest(default_prefix(dag, run, mode))
        print(
            f"\ncost cap ({mode}): gateway billed ${billed:.2f} for {len(calls)} requests; manifest says "
            f"${manifest['cost']['usd']:.2f}, {manifest['summary']['images_stored']} images; cap $0.10"
        )
        assert billed <= 0.10 + 1e-9
        assert manifest["cost"]["usd"] == pytest.approx(billed) == pytest.approx(5 * PRICE)
        assert manifest["summary"]["images_stored"] == 5
        ti = celery_deployment.task_instance(dag, run, mode)
        assert ti["state"] == "failed" and ti["try_number"] == 1


def test_a_worker_machine_dying_mid_batch_costs_no_stored_image_twice(
    celery_deployment: Deployment, sim: SimulatorControl
) -> None:
    dag = "e2e_grok_kill_celery_worker"
    sim.set_latency(2.0)
    run = celery_deployment.trigger(dag)
    prefix = default_prefix(dag, run, "generate")
    wait_for("two images stored by try 1", lambda: len(images(celery_deployment, prefix)) >= 2, 180, every=0.1)
    ti = celery_deployment.task_instance(dag, run, "generate")
    assert ti["state"] == "running" and ti["try_number"] == 1 and ti["hostname"] in CELERY_WORKERS, ti
    kept = images(celery_deployment, prefix)
    killed = celery_deployment.kill_machine(ti["hostname"])  # the Celery worker and every process under it
    print(f"\nkilled {ti['hostname']}: {len(killed)} processes")

    assert celery_deployment.wait_run(dag, run, seconds=300) == "success", explain(celery_deployment, dag, run)
    retried = celery_deployment.task_instance(dag, run, "generate")
    assert retried["try_number"] == 2 and retried["hostname"] != ti["hostname"], retried
    counts = check_exactly_once(celery_deployment, sim, marker="kill-celery", prefix=prefix, prompts=8, kept=kept)
    assert counts["stored_before_kill"] >= 2
