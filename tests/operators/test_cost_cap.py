"""
``max_cost_usd`` in real DAGs (dag.test()), measured at the gateway: what the simulator billed is never
more than the cap, in sync and deferrable mode, and a retry with a higher cap pays only for what is missing.
The simulator bills $0.02 an image ($0.02 per input image of an edit too) and reports it as usage.
"""

from __future__ import annotations

import pytest

from airflow_provider_grok.testing import GrokSimulator
from tests.support import assert_objects_match_manifest, dag_source, put_png, wait_until

PROMPTS = [f"cap prompt {i}" for i in range(8)]


def billed(sim: GrokSimulator) -> float:
    return float(sim.billing()["cost_usd"])


@pytest.mark.parametrize("deferrable", [False, True])
def test_the_cap_stops_sending_before_the_bill_passes_it(grok_simulator, s3, dag_runner, capfd, deferrable):
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt={PROMPTS!r}, s3_bucket="{s3.bucket}", '
        f's3_key_prefix="cap", max_concurrency=4, max_cost_usd=0.10, deferrable={deferrable})'
    )
    result = dag_runner.run(source)

    assert result.state == "failed"
    assert billed(grok_simulator) <= 0.10 + 1e-9
    assert billed(grok_simulator) == pytest.approx(0.10)  # it spent up to the cap, not short of it
    manifest = s3.manifest("cap")
    stored = [p for p in manifest["prompts"] if p["images"]]
    assert len(stored) == 5 and manifest["cost"]["usd"] == pytest.approx(0.10)
    assert manifest["status"] == "failed"
    assert_objects_match_manifest(s3, manifest)
    missing = [p["prompt_index"] for p in manifest["prompts"] if not p["images"]]
    assert len(missing) == 3
    assert all("max_cost_usd" in manifest["prompts"][i]["error"] for i in missing)
    logs = capfd.readouterr().out
    assert "GrokCostCapExceededError" in logs
    assert "$0.1000 billed of max_cost_usd=$0.1000" in logs
    for index in missing:
        assert f"{index} ('cap prompt {index}', 1 images)" in logs  # which prompts were not generated


def test_a_retry_with_a_higher_cap_pays_only_for_what_is_missing(grok_simulator, s3, dag_runner):
    # The cap is templated: rendered per try, as if the user raised a Variable before the retry.
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt={PROMPTS!r}, s3_bucket="{s3.bucket}", '
        's3_key_prefix="raise", max_concurrency=2, retries=1, retry_delay=datetime.timedelta(seconds=0), '
        'max_cost_usd="{{ 0.06 if ti.try_number == 1 else 1.00 }}")'
    )
    result = dag_runner.run(source)

    assert result.state == "success"
    assert result.task_instances()[("gen", -1)] == ("success", 2)
    calls = grok_simulator.generation_calls
    assert len(calls) == 8 and len({c.prompt for c in calls}) == 8  # no prompt paid for twice
    manifest = s3.manifest("raise")
    assert manifest["cost"]["by_try"]["1"]["usd"] == pytest.approx(0.06)
    assert manifest["cost"]["by_try"]["2"]["usd"] == pytest.approx(0.10)
    assert billed(grok_simulator) == pytest.approx(manifest["cost"]["usd"]) == pytest.approx(0.16)


def test_a_gateway_that_reports_no_cost_cannot_be_capped_and_says_so_at_once(s3, dag_runner, monkeypatch, capfd):
    with GrokSimulator(dialect="openai") as sim:  # gateway 003 reports no usage
        monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", sim.connection_json(base_suffix="/v1", model="grok-imagine"))
        source = dag_source(
            f'GrokGenerateImagesOperator(task_id="gen", prompt=["a", "b", "c"], s3_bucket="{s3.bucket}", '
            's3_key_prefix="nousage", max_concurrency=3, max_cost_usd=5)'
        )
        result = dag_runner.run(source)
        assert len(sim.generation_calls) == 1  # nothing more was spent after the first answer
    assert result.state == "failed"
    logs = capfd.readouterr().out
    assert "reported no cost (usage.cost_in_usd_ticks)" in logs and "cannot be enforced" in logs
    assert s3.manifest("nousage")["summary"]["images_stored"] == 1  # what arrived is stored


def test_the_edit_operator_takes_the_same_cap(grok_simulator, s3, dag_runner):
    for i in range(4):
        put_png(s3, f"in/{i}.png", (40 * i, 90, 160))
    sources = [f"s3://{s3.bucket}/in/{i}.png" for i in range(4)]
    source = dag_source(
        f'GrokEditImagesOperator(task_id="edit", prompt="as a watercolour", source_images={sources!r}, '
        f's3_bucket="{s3.bucket}", s3_key_prefix="editcap", max_concurrency=2, max_cost_usd=0.10)'
    )
    result = dag_runner.run(source)

    assert result.state == "failed"
    # Each edit bills its input and its output: $0.04. Two fit in $0.10; a third would make $0.12.
    assert len(grok_simulator.edits) == 2 and billed(grok_simulator) == pytest.approx(0.08)
    assert s3.manifest("editcap")["summary"]["images_stored"] == 2


def test_the_manifest_counts_a_retried_attempt_that_got_no_answer(grok_simulator, s3, dag_runner, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", grok_simulator.connection_json(timeout=1, max_retries=1))
    grok_simulator.slow_down(2.5, times=1)  # billed by the gateway, abandoned by the client, then retried
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt="a slow lighthouse", s3_bucket="{s3.bucket}", '
        's3_key_prefix="attempts")'
    )
    assert dag_runner.run(source).state == "success"
    wait_until("the abandoned attempt to finish", lambda: grok_simulator.in_flight == 0, 10)

    cost = s3.manifest("attempts")["cost"]
    assert cost["attempts_unanswered"] == 1 and cost["requests_unanswered"] == 0
    assert cost["usd"] == pytest.approx(0.02)
    # What the gateway billed is within what the manifest admits: known cost + every unanswered attempt.
    assert billed(grok_simulator) == pytest.approx(cost["usd"] + 0.02 * cost["attempts_unanswered"])
