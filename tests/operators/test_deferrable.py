"""deferrable=True end to end with dag.test() (the trigger runs inline): same S3 result as the sync path."""

from __future__ import annotations

import pendulum

from tests.support import assert_objects_match_manifest, comparable, dag_source


def test_deferrable_stores_byte_identical_objects_and_manifest(grok_simulator, s3, dag_runner):
    prompts = '["a red fox", "an owl at night", "a hare"]'
    body = (
        'GrokGenerateImagesOperator(task_id="gen", prompt={p}, n=3, s3_bucket="{b}", s3_key_prefix="{x}", '
        "deferrable={d})"
    )
    sync = dag_runner.run(dag_source(body.format(p=prompts, b=s3.bucket, x="sync", d=False)))
    sync_calls = [c.body for c in grok_simulator.generation_calls]
    grok_simulator.reset()  # same simulator state for the second path
    deferred = dag_runner.run(dag_source(body.format(p=prompts, b=s3.bucket, x="deferred", d=True)))
    deferred_calls = [c.body for c in grok_simulator.generation_calls]

    assert sync.state == deferred.state == "success"
    # The trigger stores the images itself: it asks for what the user asked for, inline by default.
    assert {c["response_format"] for c in sync_calls} == {c["response_format"] for c in deferred_calls} == {"b64_json"}
    sync_keys = [k.removeprefix("sync/") for k in s3.object_keys("sync/")]
    assert sync_keys == [k.removeprefix("deferred/") for k in s3.object_keys("deferred/")]
    for key in sync_keys:
        if key != "manifest.json":
            assert s3.get(f"sync/{key}") == s3.get(f"deferred/{key}"), key
    sync_manifest, deferred_manifest = s3.manifest("sync"), s3.manifest("deferred")
    assert comparable(sync_manifest, "sync/") == comparable(deferred_manifest, "deferred/")
    assert_objects_match_manifest(s3, deferred_manifest)
    strip = [{k: v for k, v in x.items() if k not in ("s3_uri", "key")} for x in sync.xcom("gen")]
    assert strip == [{k: v for k, v in x.items() if k not in ("s3_uri", "key")} for x in deferred.xcom("gen")]


def test_complete_manifest_means_no_deferral_and_no_call(grok_simulator, s3, dag_runner, capfd):
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt="x", s3_bucket="{s3.bucket}", s3_key_prefix="skip", '
        "deferrable=True)"
    )
    path, dag_id = dag_runner.write(source)
    same_run = pendulum.datetime(2026, 5, 1, tz="UTC")  # the same run id: the task instance runs again
    dag_runner.run_file(path, dag_id, logical_date=same_run, run_after=same_run)
    capfd.readouterr()
    assert len(grok_simulator.generation_calls) == 1

    second = dag_runner.run_file(path, dag_id, logical_date=same_run, run_after=same_run)

    assert second.state == "success" and len(grok_simulator.generation_calls) == 1
    logs = capfd.readouterr().out
    assert "nothing to generate" in logs and "Deferring" not in logs


def test_trigger_fetches_urls_at_once_so_none_expire_during_the_deferral(grok_simulator, s3, dag_runner):
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt=["a", "b"], n=2, s3_bucket="{s3.bucket}", '
        's3_key_prefix="urls", response_format="url", deferrable=True)'
    )
    result = dag_runner.run(source)

    assert result.state == "success"
    calls = [(c.body["prompt"], c.body["n"], c.body["response_format"]) for c in grok_simulator.generation_calls]
    assert sorted(calls) == [("a", 2, "url"), ("b", 2, "url")]  # nothing regenerated
    assert len(grok_simulator.image_requests) == 4  # each URL fetched once, by the trigger
    manifest = s3.manifest("urls")
    assert manifest["status"] == "complete" and manifest["summary"]["images_stored"] == 4
    assert_objects_match_manifest(s3, manifest)


def test_error_event_fails_with_the_original_error(grok_simulator, s3, dag_runner, monkeypatch, capfd):
    monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", grok_simulator.connection_json(api_key="wrong-key-1234"))
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt=["a", "b"], s3_bucket="{s3.bucket}", '
        's3_key_prefix="autherr", deferrable=True)'
    )
    result = dag_runner.run(source)

    assert result.state == "failed"
    logs = capfd.readouterr().out
    assert "GrokAuthError" in logs and "Incorrect API key provided" in logs
    assert "wrong-key-1234" not in logs
    manifest = s3.manifest("autherr")  # not left "in_progress": it says why nothing was stored
    assert manifest["status"] == "failed"
    assert all(r["error"].startswith("GrokAuthError: ") for r in manifest["prompts"])


def test_per_prompt_failure_in_the_trigger_keeps_the_rest(grok_simulator, s3, dag_runner, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", grok_simulator.connection_json(max_retries=0))
    grok_simulator.fail(500, times=None, prompt_contains="owl", message="GPU node lost")
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt=["fox", "owl"], s3_bucket="{s3.bucket}", '
        's3_key_prefix="dpart", deferrable=True)'
    )
    result = dag_runner.run(source)

    assert result.state == "failed"
    manifest = s3.manifest("dpart")
    fox, owl = manifest["prompts"]
    assert fox["status"] == "complete" and "dpart/0-0.jpg" in s3.object_keys()
    assert owl["status"] == "failed" and "GrokServerError: Grok API answered HTTP 500: GPU node lost" in owl["error"]


def test_default_deferrable_comes_from_config(monkeypatch):
    from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator

    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    assert GrokGenerateImagesOperator(task_id="a", prompt="x", s3_bucket="bkt").deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert GrokGenerateImagesOperator(task_id="b", prompt="x", s3_bucket="bkt").deferrable is False
    assert GrokGenerateImagesOperator(task_id="c", prompt="x", s3_bucket="bkt", deferrable=True).deferrable is True
