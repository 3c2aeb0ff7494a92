"""
Exactly once where users run it: a real deployment, REST-triggered runs with no logical date, and kills.

The simulator's call log (over its HTTP control API) says what was paid; S3 (moto) says what was stored;
the manifest says what the provider claims. Each kill scenario prints its POST counts.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import requests

from airflow_provider_grok.record.keys import default_prefix
from airflow_provider_grok.testing import SimulatorControl
from tests.e2e.checks import PRICE, check_exactly_once, explain, images, posts
from tests.e2e.deployment import Deployment, wait_for

pytestmark = pytest.mark.e2e
DEFERRED_PROMPTS = ("An isometric city at night, neon", "A tide pool at low tide, macro photography")


@pytest.fixture
def sim(deployment: Deployment) -> SimulatorControl:
    control = SimulatorControl(deployment.sim_url)
    control.set_latency(0)
    return control


def test_examples_succeed_when_triggered_with_no_logical_date(deployment: Deployment, sim: SimulatorControl) -> None:
    dags = ("example_grok_scheduled_content", "example_grok_deferrable", "example_grok_hook_taskflow")
    consumer = "example_grok_asset_consumer"

    def consumer_runs_done() -> int:
        return sum(r["state"] == "success" for r in deployment.runs(consumer, "asset_triggered"))

    # The deployment waited for the scheduled example's own run and the consumer run it triggered.
    before = consumer_runs_done()
    runs = {dag: deployment.trigger(dag) for dag in dags}
    for dag, run in runs.items():
        assert deployment.wait_run(dag, run) == "success", explain(deployment, dag, run)

    # Deferred: one request per prompt whatever the tries (a retry after Airflow's deferral race is free).
    deferred = "example_grok_deferrable"
    calls = [c for c in sim.generation_calls() if c["prompt"] in DEFERRED_PROMPTS]
    tries = [(t["map_index"], t["try_number"]) for t in deployment.task_instances(deferred, runs[deferred])]
    spent = [deployment.manifest(f"{default_prefix(deferred, runs[deferred], 'generate')}/map-{i}") for i in (0, 1)]
    print(f"\ndeferred example: {len(calls)} requests, tries {tries}")
    assert len(calls) == 2 and sum(m["cost"]["usd"] for m in spent) == pytest.approx(4 * PRICE), (calls, tries)

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

    wait_for("the asset-triggered consumer run", lambda: consumer_runs_done() > before, 120, every=1)


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


def test_the_images_tab_shows_every_image_of_a_task_instance_in_a_real_browser(deployment: Deployment) -> None:
    from tests.e2e.browser import OUTPUT, images_loaded, logged_in, open_images_tab

    dag = "example_grok_scheduled_content"
    run = deployment.trigger(dag)
    assert deployment.wait_run(dag, run) == "success", explain(deployment, dag, run)
    prefix = f"{default_prefix(dag, run, 'generate')}/map-0"
    manifest = deployment.manifest(prefix)
    view = f"{deployment.api}/grok/images/{dag}/{run}/generate/0"
    image_key = manifest["prompts"][0]["images"][0]["key"]
    # A mounted app is anonymous unless it checks itself: without a login, neither the page nor an image.
    for url in (view, f"{view}/file/{image_key}"):
        assert requests.get(url, timeout=30).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer forged"}, timeout=30).status_code == 403
    assert requests.get(view, headers=deployment.authorized(), timeout=30).status_code == 200

    OUTPUT.mkdir(exist_ok=True)
    with logged_in(deployment.api, "viewer", deployment.passwords["viewer"]) as page:
        frame = open_images_tab(page, deployment.api, dag_id=dag, run_id=run, task_id="generate", map_index=0)
        widths = images_loaded(frame)
        cost = frame.locator("[data-cost-all]").inner_text()
        page.screenshot(path=str(OUTPUT / "images-view.png"), full_page=True)
    stored = manifest["summary"]["images_stored"]
    print(f"\nImages tab: {len(widths)} thumbnails, natural widths {widths}, '{cost}'; screenshot {OUTPUT}")
    assert len(widths) == stored > 0 and all(width > 0 for width in widths)
    assert cost == f"all tries ${manifest['cost']['usd']:.4f}"
