"""GrokEditImagesOperator in real DAGs (dag.test()) against the simulator's edits and a moto S3 server."""

from __future__ import annotations

import hashlib

import pendulum
import pytest

from airflow_provider_grok.operators.grok import GrokEditImagesOperator
from airflow_provider_grok.testing.context import TaskContext
from tests.support import assert_objects_match_manifest, dag_source, put_png

SAME_RUN = pendulum.datetime(2026, 5, 2, tz="UTC")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_restyle_every_generated_image_from_the_generate_xcom(grok_simulator, s3, dag_runner):
    source = dag_source(f"""
shots = GrokGenerateImagesOperator(
    task_id="shots", prompt=["a teapot", "a vase"], s3_bucket="{s3.bucket}", s3_key_prefix="shots"
)
GrokEditImagesOperator(
    task_id="sketch", prompt="The same object as a pencil sketch", source_images=shots.output,
    s3_bucket="{s3.bucket}", s3_key_prefix="sketch",
)""")
    result = dag_runner.run(source)

    assert result.state == "success"
    manifest = s3.manifest("sketch")
    assert [len(p["images"]) for p in manifest["prompts"]] == [1, 1]  # one edit per source
    for index, record in enumerate(manifest["prompts"]):
        (src,) = record["sources"]
        assert src["uri"] == f"s3://{s3.bucket}/shots/{index}-0.jpg"
        assert src["sha256"] == sha(s3.get(f"shots/{index}-0.jpg"))  # the manifest knows what was edited
    # The simulator received exactly those bytes, inline.
    assert {r["sources"][0]["sha256"] for r in manifest["prompts"]} == {
        e["sources"][0]["sha256"] for e in grok_simulator.edits
    }
    assert manifest["cost_usd"] == pytest.approx(2 * 2 * 0.02)  # billed for input and output
    assert_objects_match_manifest(s3, manifest)
    assert [x["prompt"] for x in result.xcom("sketch")] == ["The same object as a pencil sketch"] * 2


def test_variants_of_one_source_and_a_multi_reference_group(grok_simulator, s3, dag_runner):
    product = put_png(s3, "in/product.png", (200, 30, 30))
    scene = put_png(s3, "in/scene.png", (30, 30, 200))
    source = dag_source(f"""
GrokEditImagesOperator(
    task_id="variants", prompt=["in spring colours", "in winter colours"],
    source_images="s3://{s3.bucket}/in/product.png", s3_bucket="{s3.bucket}", s3_key_prefix="variants",
)
GrokEditImagesOperator(
    task_id="scene", prompt="Put <IMAGE_0> on the table in <IMAGE_1>", aspect_ratio="16:9",
    source_images=[["s3://{s3.bucket}/in/product.png", "s3://{s3.bucket}/in/scene.png"]],
    s3_bucket="{s3.bucket}", s3_key_prefix="scene",
)""")
    result = dag_runner.run(source)

    assert result.state == "success"
    variants = s3.manifest("variants")
    assert [p["prompt"] for p in variants["prompts"]] == ["in spring colours", "in winter colours"]
    assert all(p["sources"][0]["sha256"] == sha(product) for p in variants["prompts"])
    (group,) = s3.manifest("scene")["prompts"]
    assert [s["sha256"] for s in group["sources"]] == [sha(product), sha(scene)]
    bodies = [c.body for c in grok_simulator.calls if c.path == "/v1/images/edits"]
    (multi,) = [b for b in bodies if "images" in b]
    assert len(multi["images"]) == 2 and multi["aspect_ratio"] == "16:9"


def test_bad_edits_fail_before_any_call_and_reruns_pay_nothing(grok_simulator, s3, dag_runner):
    put_png(s3, "in/a.png", (1, 2, 3))
    bad = dag_source(f"""
GrokEditImagesOperator(
    task_id="bad", prompt="Blend <IMAGE_0> and <IMAGE_2>", source_images=[["s3://{s3.bucket}/in/a.png"] * 2],
    s3_bucket="{s3.bucket}", s3_key_prefix="bad", retries=2,
)""")
    failed = dag_runner.run(bad)
    assert failed.state == "failed" and failed.task_instances()[("bad", -1)] == ("failed", 1)
    assert grok_simulator.calls == []

    good = dag_source(f"""
GrokEditImagesOperator(
    task_id="good", prompt="restyle", source_images=["s3://{s3.bucket}/in/a.png"], s3_bucket="{s3.bucket}",
    s3_key_prefix="good",
)""")
    path, dag_id = dag_runner.write(good)
    dag_runner.run_file(path, dag_id, logical_date=SAME_RUN, run_after=SAME_RUN)
    again = dag_runner.run_file(path, dag_id, logical_date=SAME_RUN, run_after=SAME_RUN)
    assert again.state == "success" and len(grok_simulator.edits) == 1  # the rerun paid nothing


def test_deferred_edits_store_like_the_sync_path(grok_simulator, s3, dag_runner):
    source_png = put_png(s3, "in/d.png", (9, 9, 9))
    body = (
        'GrokEditImagesOperator(task_id="e", prompt=["one", "two"], source_images="s3://{b}/in/d.png", '
        's3_bucket="{b}", s3_key_prefix="{x}", deferrable={d})'
    )
    sync = dag_runner.run(dag_source(body.format(b=s3.bucket, x="esync", d=False)))
    deferred = dag_runner.run(dag_source(body.format(b=s3.bucket, x="edef", d=True)))

    assert sync.state == deferred.state == "success"
    for prefix in ("esync", "edef"):
        manifest = s3.manifest(prefix)
        assert manifest["status"] == "complete" and manifest["summary"]["images_stored"] == 2
        assert all(p["sources"][0]["sha256"] == sha(source_png) for p in manifest["prompts"])


def test_lineage_has_the_s3_sources_as_inputs(grok_simulator, s3):
    put_png(s3, "in/l.png", (5, 5, 5))
    op = GrokEditImagesOperator(
        task_id="gen", prompt="restyle", source_images=f"s3://{s3.bucket}/in/l.png", s3_bucket=s3.bucket,
        s3_key_prefix="lin",
    )  # fmt: skip
    op.execute(TaskContext())
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [(f"s3://{s3.bucket}", "in/l.png")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [(f"s3://{s3.bucket}", "lin")]
