"""GrokGenerateImagesOperator in real DAGs (dag.test()), against the simulator and a moto S3 server."""

from __future__ import annotations

import hashlib
import json

import pendulum
import pytest

from airflow_provider_grok.testing import GrokSimulator
from tests.support import assert_objects_match_manifest, dag_source


def test_one_prompt(grok_simulator, s3, dag_runner):
    source = dag_source(f'GrokGenerateImagesOperator(task_id="gen", prompt="a red fox", s3_bucket="{s3.bucket}")')
    result = dag_runner.run(source)

    assert result.state == "success"
    prefix = f"grok/{result.dag_id}/{result.run_id.replace(':', '_').replace('+', '_')}/gen"
    assert s3.object_keys() == [f"{prefix}/0-0.jpg", f"{prefix}/manifest.json"]
    (item,) = result.xcom("gen")
    assert item == {
        "s3_uri": f"s3://{s3.bucket}/{prefix}/0-0.jpg",
        "bucket": s3.bucket,
        "key": f"{prefix}/0-0.jpg",
        "content_type": "image/jpeg",
        "size_bytes": len(s3.get(f"{prefix}/0-0.jpg")),
        "sha256": hashlib.sha256(s3.get(f"{prefix}/0-0.jpg")).hexdigest(),
        "prompt": "a red fox",
        "revised_prompt": None,
        "model": "grok-imagine-image",
        "prompt_index": 0,
        "image_index": 0,
    }
    manifest = s3.manifest(prefix)
    assert manifest["status"] == "complete"
    assert manifest["request"] == {"model": "grok-imagine-image", "n": 1, "response_format": "b64_json"}
    assert manifest["cost_usd"] == pytest.approx(0.02)
    assert [r["request_ids"] for r in manifest["requests"]] == [["sim-1"]]
    assert manifest["cost"]["requests"] == manifest["cost"]["this_try"]["requests"] == 1
    assert_objects_match_manifest(s3, manifest)
    assert [c.body["response_format"] for c in grok_simulator.generation_calls] == ["b64_json"]
    run = result.run_id.replace(":", "%3A").replace("+", "%2B")
    assert result.extra_link("gen", "Grok images") == f"/grok/images/{result.dag_id}/{run}/gen/-1"  # the Images view


def test_list_of_prompts_with_n(grok_simulator, s3, dag_runner):
    source = dag_source(f"""
GrokGenerateImagesOperator(
    task_id="gen", prompt=["a fox", "an owl", "a hare"], n=2, aspect_ratio="16:9", resolution="1k",
    s3_bucket="{s3.bucket}", s3_key_prefix="catalogue/", max_concurrency=2,
)""")
    result = dag_runner.run(source)

    assert result.state == "success"
    expected = [f"catalogue/{p}-{i}.jpg" for p in range(3) for i in range(2)] + ["catalogue/manifest.json"]
    assert s3.object_keys() == sorted(expected)
    xcom = result.xcom("gen")
    assert [(x["prompt_index"], x["image_index"], x["prompt"]) for x in xcom] == [
        (p, i, prompt) for p, prompt in enumerate(["a fox", "an owl", "a hare"]) for i in range(2)
    ]
    manifest = s3.manifest("catalogue")
    assert manifest["summary"] == {
        "prompts": 3,
        "images_requested": 6,
        "images_stored": 6,
        "images_reused": 0,
        "images_filtered": 0,
        "prompts_failed": [],
    }
    assert manifest["cost_usd"] == pytest.approx(0.12)
    assert_objects_match_manifest(s3, manifest)
    bodies = [c.body for c in grok_simulator.generation_calls]
    assert sorted(b["prompt"] for b in bodies) == ["a fox", "a hare", "an owl"]
    assert all(b["aspect_ratio"] == "16:9" and b["n"] == 2 for b in bodies)
    assert grok_simulator.peak_concurrency <= 2


def test_mapped_task_gets_distinct_prefixes(grok_simulator, s3, dag_runner):
    source = dag_source(f"""
GrokGenerateImagesOperator.partial(task_id="gen", s3_bucket="{s3.bucket}", s3_key_prefix="mapped").expand(
    prompt=["first", "second", "third"]
)""")
    result = dag_runner.run(source)

    assert result.state == "success"
    assert s3.object_keys() == [f"mapped/map-{i}/{name}" for i in range(3) for name in ("0-0.jpg", "manifest.json")]
    for index, prompt in enumerate(["first", "second", "third"]):
        (item,) = result.xcom("gen", map_index=index)
        assert item["prompt"] == prompt and item["key"] == f"mapped/map-{index}/0-0.jpg"
        assert s3.manifest(f"mapped/map-{index}")["map_index"] == index


def test_templating_from_params_and_logical_date(grok_simulator, s3, dag_runner):
    source = dag_source(
        f"""
GrokGenerateImagesOperator(
    task_id="gen", prompt=["{{{{ params.subject }}}} on {{{{ ds }}}}"], n="{{{{ params.n }}}}",
    aspect_ratio="{{{{ params.ratio }}}}", s3_bucket="{s3.bucket}", s3_key_prefix="daily/{{{{ ds_nodash }}}}",
)""",
        params='{"subject": Param("a lighthouse", type="string"), "n": Param(2, type="integer"), '
        '"ratio": Param("3:2", type="string")}',
    )
    logical_date = __import__("pendulum").datetime(2025, 3, 14)
    result = dag_runner.run(source, logical_date=logical_date)

    assert result.state == "success"
    bodies = [c.body for c in grok_simulator.generation_calls]
    assert bodies == [
        {
            "model": "grok-imagine-image",
            "prompt": "a lighthouse on 2025-03-14",
            "n": 2,
            "aspect_ratio": "3:2",
            "response_format": "b64_json",
        }
    ]
    assert s3.object_keys() == ["daily/20250314/0-0.jpg", "daily/20250314/0-1.jpg", "daily/20250314/manifest.json"]


def test_partial_moderation_warns_and_records(grok_simulator, s3, dag_runner, capfd):
    grok_simulator.moderate(keep=1, prompt_contains="edgy")
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt=["calm", "edgy"], n=3, s3_bucket="{s3.bucket}", '
        's3_key_prefix="mod")'
    )
    result = dag_runner.run(source)

    assert result.state == "success"
    manifest = s3.manifest("mod")
    calm, edgy = manifest["prompts"]
    assert (calm["status"], len(calm["images"])) == ("complete", 3)
    assert (edgy["status"], len(edgy["images"]), edgy["filtered"]) == ("partial", 1, 2)
    assert manifest["status"] == "partial" and manifest["summary"]["images_filtered"] == 2
    assert len(result.xcom("gen")) == 4
    assert "content moderation removed 2 of 3 images" in capfd.readouterr().out


@pytest.mark.parametrize("allow_partial", [True, False])
def test_total_moderation(grok_simulator, s3, dag_runner, allow_partial):
    grok_simulator.moderate(keep=0, prompt_contains="forbidden")
    source = dag_source(f"""
GrokGenerateImagesOperator(
    task_id="gen", prompt=["fine", "forbidden thing"], s3_bucket="{s3.bucket}", s3_key_prefix="total",
    allow_partial={allow_partial},
)""")
    result = dag_runner.run(source)

    manifest = s3.manifest("total")
    fine, refused = manifest["prompts"]
    assert fine["status"] == "complete" and len(fine["images"]) == 1
    assert refused["images"] == [] and refused["filtered"] == 1
    assert "total/0-0.jpg" in s3.object_keys()  # what was made is kept either way
    if allow_partial:
        assert result.state == "success" and refused["status"] == "filtered"
        assert len(result.xcom("gen")) == 1
    else:
        assert result.state == "failed" and refused["status"] == "failed"
        assert manifest["summary"]["prompts_failed"] == [1]


def test_failure_mid_batch_then_retry_regenerates_only_the_missing_prompt(grok_simulator, s3, dag_runner, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", grok_simulator.connection_json(max_retries=0))
    grok_simulator.fail(500, times=1, prompt_contains="owl", message="GPU node lost")
    source = dag_source(f"""
GrokGenerateImagesOperator(
    task_id="gen", prompt=["a fox", "an owl", "a hare"], n=2, s3_bucket="{s3.bucket}",
    s3_key_prefix="retry", retries=1, retry_delay=datetime.timedelta(seconds=0),
)""")
    result = dag_runner.run(source)

    assert result.state == "success"
    assert result.task_instances()[("gen", -1)] == ("success", 2)
    prompts = [(c.prompt, c.status) for c in grok_simulator.generation_calls]
    first_try, second_try = prompts[:3], prompts[3:]
    assert sorted(first_try) == [("a fox", 200), ("a hare", 200), ("an owl", 500)]
    assert second_try == [("an owl", 200)]  # the retry paid only for the missing prompt
    manifest = s3.manifest("retry")
    assert manifest["status"] == "complete" and manifest["try_number"] == 2
    assert [len(r["images"]) for r in manifest["prompts"]] == [2, 2, 2]
    cost = manifest["cost"]  # both tries are counted; the refused request (HTTP 500) was not billed
    assert (cost["requests"], cost["requests_billed"], cost["usd"]) == (4, 3, pytest.approx(0.12))
    assert cost["this_try"]["requests"] == 1 and cost["this_try"]["usd"] == pytest.approx(0.04)
    assert cost["by_try"]["1"]["usd"] == pytest.approx(0.08) and manifest["summary"]["images_reused"] == 4
    assert len(result.xcom("gen")) == 6
    assert_objects_match_manifest(s3, manifest)


def test_failed_prompt_leaves_the_rest_stored_and_says_what_is_missing(
    grok_simulator, s3, dag_runner, monkeypatch, capfd
):
    monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", grok_simulator.connection_json(max_retries=0))
    grok_simulator.fail(503, times=None, prompt_contains="owl", message="upstream down")
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt=["a fox", "an owl"], s3_bucket="{s3.bucket}", '
        's3_key_prefix="fail")'
    )
    result = dag_runner.run(source)

    assert result.state == "failed"
    assert s3.object_keys() == ["fail/0-0.jpg", "fail/manifest.json"]
    manifest = s3.manifest("fail")
    assert manifest["status"] == "failed" and manifest["summary"]["prompts_failed"] == [1]
    assert "upstream down" in manifest["prompts"][1]["error"]
    logs = capfd.readouterr().out
    assert "1 of 2 prompts are incomplete; the 1 images that were stored stay in S3" in logs
    assert "prompt 1 ('an owl'): 0/1 stored" in logs


# The same logical date gives the same run id: dag.test() then runs the same task instances again, as a
# cleared task does in a deployment. A run with another run id may not reuse the prefix (tested below).
SAME_RUN = pendulum.datetime(2026, 5, 1, tz="UTC")


def test_rerun_with_complete_manifest_makes_no_call(grok_simulator, s3, dag_runner):
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt=["a", "b"], n=2, s3_bucket="{s3.bucket}", '
        's3_key_prefix="stable")'
    )
    path, dag_id = dag_runner.write(source)
    first = dag_runner.run_file(path, dag_id, logical_date=SAME_RUN, run_after=SAME_RUN)
    calls_after_first = len(grok_simulator.calls)
    before = {k: s3.get(k) for k in s3.object_keys() if not k.endswith("manifest.json")}

    second = dag_runner.run_file(path, dag_id, logical_date=SAME_RUN, run_after=SAME_RUN)

    assert first.state == second.state == "success"
    assert calls_after_first == 2 and len(grok_simulator.calls) == 2  # the rerun paid nothing
    assert second.xcom("gen") == first.xcom("gen")
    assert {k: s3.get(k) for k in before} == before


def test_a_prefix_holding_another_runs_images_is_refused_before_any_call(grok_simulator, s3, dag_runner, capfd):
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt="a", s3_bucket="{s3.bucket}", s3_key_prefix="daily", '
        "retries=3)"
    )
    path, dag_id = dag_runner.write(source)
    first = dag_runner.run_file(path, dag_id)
    before = s3.manifest("daily")
    capfd.readouterr()

    second = dag_runner.run_file(path, dag_id)  # another run (a manual run the same day) with the same prefix

    assert first.state == "success" and second.state == "failed" and first.run_id != second.run_id
    assert second.task_instances()[("gen", -1)] == ("failed", 1)  # no retries: a retry cannot fix it
    assert len(grok_simulator.generation_calls) == 1  # the second run paid nothing
    assert s3.manifest("daily") == before  # and adopted, overwrote or re-billed nothing
    logs = capfd.readouterr().out
    assert f"already holds the work of another task instance (its manifest names dag_id '{dag_id}'" in logs
    assert f"run_id '{first.run_id}'" in logs and "include {{ run_id }}" in logs


def test_cost_is_unknown_not_zero_when_the_gateway_reports_no_usage(s3, dag_runner, monkeypatch):
    with GrokSimulator(dialect="openai") as sim:  # the OpenAI-style gateway sends no usage
        monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", sim.connection_json(model="grok-imagine"))
        body = f'GrokGenerateImagesOperator(task_id="gen", prompt="a", s3_bucket="{s3.bucket}", s3_key_prefix="nu")'
        result = dag_runner.run(dag_source(body))
    manifest = s3.manifest("nu")
    assert result.state == "success"
    assert manifest["cost_usd"] is None and manifest["cost"]["requests_without_usage"] == 1
    assert manifest["cost"]["requests_billed"] == 1


def test_non_ascii_prompt_keeps_metadata_ascii(grok_simulator, s3, dag_runner):
    prompt = "Ein Fuchs im Schnee, 雪の中の狐 🦊"
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt={prompt!r}, s3_bucket="{s3.bucket}", '
        's3_key_prefix="intl", s3_extra_args={"StorageClass": "STANDARD_IA", "Tagging": "team=content"})'
    )
    result = dag_runner.run(source)

    assert result.state == "success"
    head = s3.client.head_object(Bucket=s3.bucket, Key="intl/0-0.jpg")
    assert all(v.isascii() for v in head["Metadata"].values())
    assert head["Metadata"]["prompt-index"] == "0" and head["Metadata"]["model"] == "grok-imagine-image"
    assert head["StorageClass"] == "STANDARD_IA"
    tags = s3.client.get_object_tagging(Bucket=s3.bucket, Key="intl/0-0.jpg")["TagSet"]
    assert tags == [{"Key": "team", "Value": "content"}]
    assert s3.manifest("intl")["prompts"][0]["prompt"] == prompt  # the prompt lives in the manifest, intact
    assert result.xcom("gen")[0]["prompt"] == prompt


INVALID = {  # task id: (arguments, bucket or None for the test's bucket)
    "bad_ratio": ('prompt="x", aspect_ratio="5 by 4"', None),
    "empty_prompt": ('prompt=["ok", " "]', None),
    "no_prompts": ("prompt=[]", None),
    "n_zero": ('prompt="x", n=0', None),
    "size_and_ratio": ('prompt="x", size="1024x1024", aspect_ratio="1:1"', None),
    "bad_extra_args": ('prompt="x", s3_extra_args={"Bucket": "elsewhere"}', None),
    "bucket_uri": ('prompt="x"', "s3://bucket/path"),
    "bad_quality": ('prompt="x", quality="Ultra HD!"', None),
    "bad_cap": ('prompt="x", max_cost_usd="lots"', None),
    "zero_cap": ('prompt="x", max_cost_usd=0', None),
}


def test_invalid_parameters_fail_without_any_gateway_call_or_retry(grok_simulator, s3, dag_runner, capfd):
    tasks = [
        f'GrokGenerateImagesOperator(task_id="{name}", {args}, s3_bucket="{bucket or s3.bucket}", retries=3, '
        "retry_delay=datetime.timedelta(seconds=0))"
        for name, (args, bucket) in INVALID.items()
    ]
    result = dag_runner.run(dag_source("\n".join(tasks)))

    states = result.task_instances()
    assert {task: state for (task, _), state in states.items()} == {name: ("failed", 1) for name in INVALID}
    assert grok_simulator.calls == []  # nothing spent, nothing even asked
    assert s3.object_keys() == []
    logs = capfd.readouterr().out
    for expected in (
        "Invalid aspect_ratio='5 by 4'",
        "Invalid prompt[1]=' '",
        "Invalid prompt=[]",
        "Invalid n=0",
        "cannot be combined",
        "Bucket not allowed",
        "without s3://",
        "Invalid quality='Ultra HD!'",
        "Invalid max_cost_usd='lots': expected a number of US dollars > 0",
        "Invalid max_cost_usd=0",
    ):
        assert expected in logs


def test_operator_arguments_checked_at_parse_time():
    from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator

    with pytest.raises(ValueError, match="max_concurrency=0"):
        GrokGenerateImagesOperator(task_id="t", prompt="x", s3_bucket="b", max_concurrency=0)
    # A worker holds a thread per request; the triggerer awaits a few hundred for a few KB each.
    with pytest.raises(ValueError, match=r"max_concurrency=300: .* 1 to 64 \(up to 500 with deferrable=True\)"):
        GrokGenerateImagesOperator(task_id="t", prompt="x", s3_bucket="b", max_concurrency=300, deferrable=False)
    deferred = GrokGenerateImagesOperator(task_id="t", prompt="x", s3_bucket="b", max_concurrency=300, deferrable=True)
    assert deferred.max_concurrency == 300
    with pytest.raises(ValueError, match="max_concurrency=501"):
        GrokGenerateImagesOperator(task_id="t", prompt="x", s3_bucket="b", max_concurrency=501, deferrable=True)
    with pytest.raises(ValueError, match="allow_partial='yes'"):
        GrokGenerateImagesOperator(task_id="t", prompt="x", s3_bucket="b", allow_partial="yes")


def test_missing_bucket_fails_before_generating(grok_simulator, s3, dag_runner, capfd):
    source = dag_source('GrokGenerateImagesOperator(task_id="gen", prompt="x", s3_bucket="no-such-bucket-here")')
    result = dag_runner.run(source)

    assert result.state == "failed"
    assert grok_simulator.calls == []
    assert "the bucket 'no-such-bucket-here' does not exist" in capfd.readouterr().out


def test_access_denied_fails_before_generating(grok_simulator, s3, dag_runner, monkeypatch, capfd):
    # A user allowed to read but not write: the pre-flight manifest write must fail before any generation.
    creds = s3.user_with_policy(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}],
        }
    )
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", s3.connection_json(**creds))
    source = dag_source(f'GrokGenerateImagesOperator(task_id="gen", prompt="x", s3_bucket="{s3.bucket}")')
    s3.enforce_iam(True)
    try:
        result = dag_runner.run(source)
    finally:
        s3.enforce_iam(False)

    assert result.state == "failed"
    assert grok_simulator.calls == []
    assert "access denied" in capfd.readouterr().out


def test_key_absent_from_xcom_manifest_metadata_and_logs(grok_simulator, s3, dag_runner, capfd):
    key = grok_simulator.api_key
    grok_simulator.fail(503, times=1, message=f"upstream echoed {key}")
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt=["a", "b"], s3_bucket="{s3.bucket}", s3_key_prefix="sec")'
    )
    result = dag_runner.run(source)

    assert result.state == "success"
    logs = capfd.readouterr()
    assert key not in logs.out and key not in logs.err
    assert key not in json.dumps(result.xcom("gen"))
    assert key not in s3.get("sec/manifest.json").decode()
    for object_key in s3.object_keys():
        head = s3.client.head_object(Bucket=s3.bucket, Key=object_key)
        assert key not in json.dumps(head["Metadata"])
    for request in grok_simulator.image_requests:
        assert key not in json.dumps(request.headers)


def test_url_response_format_downloads_without_the_key(grok_simulator, s3, dag_runner):
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt="x", n=3, response_format="url", '
        f's3_bucket="{s3.bucket}", s3_key_prefix="urls")'
    )
    result = dag_runner.run(source)

    assert result.state == "success" and len(result.xcom("gen")) == 3
    assert len(grok_simulator.image_requests) == 3
    assert all("Authorization" not in r.headers for r in grok_simulator.image_requests)
    assert_objects_match_manifest(s3, s3.manifest("urls"))


def test_expired_url_is_recorded_as_not_stored(s3, dag_runner, monkeypatch):
    with GrokSimulator() as sim:
        monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", sim.connection_json())
        sim.fail_downloads(403, times=None)  # the image host refuses: as if the URL expired
        source = dag_source(
            f'GrokGenerateImagesOperator(task_id="gen", prompt="x", response_format="url", '
            f's3_bucket="{s3.bucket}", s3_key_prefix="exp")'
        )
        result = dag_runner.run(source)
        image_host = sim.image_base_url

    assert result.state == "failed"
    record = s3.manifest("exp")["prompts"][0]
    assert record["status"] == "failed"
    (lost,) = record["not_stored"]
    assert lost["image_index"] == 0 and lost["url"].startswith(image_host) and "expired" in lost["error"]


def test_asset_outlet_carries_count_and_manifest(grok_simulator, s3, dag_runner):
    source = dag_source(f"""
GrokGenerateImagesOperator(
    task_id="gen", prompt=["a", "b"], n=2, s3_bucket="{s3.bucket}", s3_key_prefix="assets",
    outlets=[Asset("s3://{s3.bucket}/assets/"), AssetAlias("grok-images")],
)""")
    result = dag_runner.run(source)

    assert result.state == "success"
    expected = {
        "images": 4,
        "prompts": 2,
        "status": "complete",
        "manifest_uri": f"s3://{s3.bucket}/assets/manifest.json",
        "prefix_uri": f"s3://{s3.bucket}/assets/",
        "run_id": result.run_id,
        "cost_usd": pytest.approx(0.08),
        "requests": 2,
        "requests_unanswered": 0,
        "attempts_unanswered": 0,
    }
    # Airflow normalises the URI (no trailing slash); one event from the Asset, one through the alias.
    events = result.asset_events(f"s3://{s3.bucket}/assets")
    assert events == [expected, expected]


def test_above_max_xcom_images_the_xcom_is_a_summary(grok_simulator, s3, dag_runner):
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt=["a", "b", "c"], s3_bucket="{s3.bucket}", '
        's3_key_prefix="big", max_xcom_images=2)'
    )
    result = dag_runner.run(source)

    assert result.state == "success"
    assert result.xcom("gen") == {
        "manifest_uri": f"s3://{s3.bucket}/big/manifest.json",
        "bucket": s3.bucket,
        "prefix": "big",
        "images": 3,
    }
    assert len(s3.manifest("big")["prompts"]) == 3


def test_connection_ids_are_templated(grok_simulator, s3, dag_runner, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GROK_FROM_PARAMS", grok_simulator.connection_json())
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt="a", s3_bucket="{s3.bucket}", s3_key_prefix="tpl", '
        'grok_conn_id="{{ params.grok_conn }}", aws_conn_id="{{ params.aws_conn }}")',
        params='{"grok_conn": "grok_from_params", "aws_conn": "aws_default"}',
    )
    monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", '{"conn_type": "grok", "host": "http://127.0.0.1:9"}')
    result = dag_runner.run(source)

    assert result.state == "success" and len(grok_simulator.generation_calls) == 1


def test_an_image_stored_just_before_a_crash_is_adopted_from_its_own_metadata(grok_simulator, s3, dag_runner):
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt=["a", "b"], s3_bucket="{s3.bucket}", s3_key_prefix="orph")'
    )
    path, dag_id = dag_runner.write(source)
    dag_runner.run_file(path, dag_id, logical_date=SAME_RUN, run_after=SAME_RUN)
    manifest = s3.manifest("orph")
    stored = manifest["prompts"][1]["images"][0]
    # What a worker killed between storing prompt 1's image and recording it leaves behind: the image, an
    # "answered" receipt, and a manifest that does not know the image yet.
    (request,) = [r for r in manifest["requests"] if r["prompt_index"] == 1]
    owner = {k: manifest[k] for k in ("dag_id", "task_id", "run_id", "map_index")}
    receipt = {"receipt_version": 1, **owner, **request, "state": "answered", "images": []}
    s3.client.put_object(Bucket=s3.bucket, Key=f"orph/_grok/requests/{request['id']}.json", Body=json.dumps(receipt))
    manifest["prompts"][1]["images"] = []
    manifest["requests"] = [r for r in manifest["requests"] if r["prompt_index"] != 1]
    s3.client.put_object(Bucket=s3.bucket, Key="orph/manifest.json", Body=json.dumps(manifest))

    result = dag_runner.run_file(path, dag_id, logical_date=SAME_RUN, run_after=SAME_RUN)

    assert result.state == "success"
    assert len(grok_simulator.generation_calls) == 2  # nothing paid again: the image was adopted
    after = s3.manifest("orph")
    assert after["prompts"][1]["images"] == [stored]  # every field recovered, the SHA-256 from the metadata
    assert after["cost"]["requests"] == 2 and after["cost"]["usd"] == pytest.approx(0.04)
    assert s3.object_keys("orph/_grok/") == []


def test_hostile_faults_end_in_the_manifest_redacted_and_the_rest_is_stored(
    grok_simulator, s3, dag_runner, monkeypatch, capfd
):
    monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", grok_simulator.connection_json(max_retries=0))
    grok_simulator.misbehave("echo_key", prompt_contains="owl", times=None)  # a 200 echoing the key
    grok_simulator.misbehave_downloads("redirect_file", times=1)  # one image URL redirects to file://
    source = dag_source(
        f'GrokGenerateImagesOperator(task_id="gen", prompt=["a fox", "an owl", "a hare"], s3_bucket="{s3.bucket}", '
        's3_key_prefix="hostile", response_format="url", max_concurrency=1)'
    )
    result = dag_runner.run(source)

    assert result.state == "failed"
    manifest = s3.manifest("hostile")
    fox, owl, hare = manifest["prompts"]
    assert owl["status"] == "failed" and owl["error"].startswith("GrokResponseError")
    assert sorted(len(p["images"]) for p in (fox, hare)) == [0, 1]  # the other billed image is stored
    (lost,) = fox["not_stored"] + hare["not_stored"]
    assert "InvalidSchema" in lost["error"]
    assert grok_simulator.api_key not in json.dumps(manifest) + capfd.readouterr().out
