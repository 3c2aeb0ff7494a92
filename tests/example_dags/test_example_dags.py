"""Every example DAG imports cleanly and runs end to end with dag.test() on the simulator and moto."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pendulum
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "example_dags"
EXAMPLE_IDS = sorted(p.stem for p in EXAMPLES.glob("example_*.py"))


EXAMPLES_BUCKET = "grok-example-dags"


@pytest.fixture
def demo_bucket(s3, monkeypatch):
    """
    The examples read their bucket from GROK_DEMO_BUCKET; point it at one bucket for all of these tests (each
    run writes under its own prefix). One bucket means one asset URI: Airflow 3.2 records no event for the
    producer's outlet once an earlier test registered the same DAG's asset under another bucket's URI.
    """
    s3.bucket = EXAMPLES_BUCKET
    if EXAMPLES_BUCKET not in [b["Name"] for b in s3.client.list_buckets()["Buckets"]]:
        s3.client.create_bucket(Bucket=EXAMPLES_BUCKET)
    monkeypatch.setenv("GROK_DEMO_BUCKET", s3.bucket)
    return s3


def test_examples_import_without_errors_or_deprecation_warnings():
    from airflow.dag_processing.dagbag import DagBag

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(str(EXAMPLES))
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == EXAMPLE_IDS
    ours = [w for w in caught if "example_dags" in str(w.filename) or "airflow_provider_grok" in str(w.filename)]
    assert [
        str(w.message) for w in ours if issubclass(w.category, DeprecationWarning | PendingDeprecationWarning)
    ] == []
    for dag in bag.dags.values():
        assert dag.doc_md is None or dag.description  # each is described
        assert "grok" in dag.tags


def run_prefix(result, task_id: str) -> str:
    """The operator's default prefix for a task of ``result``'s run."""
    from airflow_provider_grok.record.keys import default_prefix

    return default_prefix(result.dag_id, result.run_id, task_id)


# Triggered by hand with no logical date, the Airflow 3 default: the run's date is its run_after.
NO_LOGICAL_DATE = {"logical_date": None}


def test_scheduled_content_end_to_end_with_gallery(grok_simulator, demo_bucket, dag_runner):
    s3 = demo_bucket
    path = dag_runner.copy(EXAMPLES / "example_grok_scheduled_content.py")
    result = dag_runner.run_file(
        path, "example_grok_scheduled_content", run_after=pendulum.datetime(2026, 7, 4, tz="UTC"), **NO_LOGICAL_DATE
    )

    assert result.state == "success"
    prompts = sorted(c.prompt for c in grok_simulator.generation_calls)
    assert prompts == sorted(
        [
            "A lighthouse on a cliff at dawn in summer, oil painting",
            "A koi fish swimming through a nebula, July 04 edition",
            "A cosy bookshop window display in summer, watercolour",
        ]
    )
    assert {c.body["aspect_ratio"] for c in grok_simulator.generation_calls} == {"16:9"}
    base = run_prefix(result, "generate")
    images = [k for k in s3.object_keys(base + "/") if k.endswith(".jpg")]
    assert len(images) == 6
    page = s3.get(f"{base}/index.html").decode()
    head = s3.client.head_object(Bucket=s3.bucket, Key=f"{base}/index.html")
    assert head["ContentType"].startswith("text/html")
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(f"{base}/{src}" for src in sources) == sorted(images)  # every stored image, once
    for prompt in prompts:
        assert prompt in page
    assert f"s3://{s3.bucket}/{base}/map-0/0-0.jpg" in page
    assert result.xcom("build_gallery") == f"s3://{s3.bucket}/{base}/index.html"
    (event,) = result.asset_events(f"s3://{s3.bucket}/grok/example_grok_scheduled_content")  # once per run
    assert event["images"] == 6 and event["prompts"] == 3 and event["gallery_uri"].endswith(f"{base}/index.html")
    assert event["cost_usd"] == pytest.approx(0.12) and event["requests_unanswered"] == 0


def test_a_second_run_the_same_day_gets_its_own_images(grok_simulator, demo_bucket, dag_runner):
    s3 = demo_bucket
    path = dag_runner.copy(EXAMPLES / "example_grok_scheduled_content.py")
    day = pendulum.datetime(2026, 7, 8, tz="UTC")
    first = dag_runner.run_file(path, "example_grok_scheduled_content", run_after=day, **NO_LOGICAL_DATE)
    second = dag_runner.run_file(path, "example_grok_scheduled_content", run_after=day.add(hours=2), **NO_LOGICAL_DATE)

    assert first.state == second.state == "success" and first.run_id != second.run_id
    assert len(grok_simulator.generation_calls) == 6  # each run paid for its own three prompts, nothing adopted
    for run in (first, second):
        manifest = s3.manifest(run_prefix(run, "generate") + "/map-0")
        assert manifest["run_id"] == run.run_id and manifest["cost_usd"] == pytest.approx(0.04)


def test_asset_consumer_reads_the_producers_event_extra(grok_simulator, demo_bucket, dag_runner):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    s3 = demo_bucket
    producer = dag_runner.copy(EXAMPLES / "example_grok_scheduled_content.py")
    consumer = dag_runner.copy(EXAMPLES / "example_grok_asset_consumer.py")
    produced = dag_runner.run_file(producer, "example_grok_scheduled_content", **NO_LOGICAL_DATE)
    consumed = dag_runner.run_file(consumer, "example_grok_asset_consumer")  # a manual run: no triggering events
    assert produced.state == consumed.state == "success"
    assert consumed.xcom("summarise") == {"events": 0, "images": 0, "cost_usd": 0, "galleries": [], "manifests": []}

    # The same task with the real events the producer's run recorded, as the scheduler would pass them.
    from airflow.dag_processing.dagbag import DagBag

    summarise = DagBag(str(consumer)).get_dag("example_grok_asset_consumer").task_dict["summarise"]
    with create_session() as session:
        uri = f"s3://{s3.bucket}/grok/example_grok_scheduled_content"
        asset = session.query(AssetModel).filter(AssetModel.uri == uri).one()
        events = (
            session.query(AssetEvent)
            .filter(AssetEvent.asset_id == asset.id, AssetEvent.source_run_id == produced.run_id)
            .all()
        )
        summary = summarise.python_callable(triggering_asset_events={asset.uri: events})
    assert summary["events"] == 1 and summary["images"] == 6
    assert summary["cost_usd"] == pytest.approx(0.12)
    base = run_prefix(produced, "generate")
    assert summary["manifests"] == [f"s3://{s3.bucket}/{base}/map-{i}/manifest.json" for i in range(3)]
    assert summary["galleries"] == [f"s3://{s3.bucket}/{base}/index.html"]


def test_hook_taskflow_keeps_the_best_candidate(grok_simulator, demo_bucket, dag_runner):
    s3 = demo_bucket
    path = dag_runner.copy(EXAMPLES / "example_grok_hook_taskflow.py")
    result = dag_runner.run_file(path, "example_grok_hook_taskflow", **NO_LOGICAL_DATE)

    assert result.state == "success"
    out = result.xcom("best_of_three")
    key = f"taskflow/{result.run_id.replace(':', '_').replace('+', '_')}/best.jpg"
    assert out["candidates"] == 3 and out["s3_uri"] == f"s3://{s3.bucket}/{key}"
    assert s3.object_keys("taskflow/") == [key]
    assert [c.body["n"] for c in grok_simulator.generation_calls] == [3]


def test_deferrable_example_runs_through_the_trigger(grok_simulator, demo_bucket, dag_runner):
    s3 = demo_bucket
    path = dag_runner.copy(EXAMPLES / "example_grok_deferrable.py")
    result = dag_runner.run_file(path, "example_grok_deferrable", **NO_LOGICAL_DATE)

    assert result.state == "success"
    assert {c.body["response_format"] for c in grok_simulator.generation_calls} == {"b64_json"}
    assert {c.body["resolution"] for c in grok_simulator.generation_calls} == {"2k"}
    assert len([k for k in s3.object_keys(run_prefix(result, "generate") + "/") if k.endswith(".jpg")]) == 4


def test_edit_catalogue_restyles_every_shot_and_links_before_and_after(grok_simulator, demo_bucket, dag_runner):
    import posixpath

    s3 = demo_bucket
    path = dag_runner.copy(EXAMPLES / "example_grok_edit_catalogue.py")
    result = dag_runner.run_file(path, "example_grok_edit_catalogue", **NO_LOGICAL_DATE)

    assert result.state == "success"
    shots = [k for k in s3.object_keys(run_prefix(result, "shots") + "/") if k.endswith(".jpg")]
    base = run_prefix(result, "restyle")
    edits = [k for k in s3.object_keys(base + "/") if k.endswith(".jpg")]
    assert len(shots) == 3 and len(edits) == 6  # two styles of every shot
    assert len(grok_simulator.edits) == 6
    page = s3.get(f"{base}/index.html").decode()
    links = re.findall(r'<img src="([^"]+)"', page)
    assert len(links) == 12  # each edit: its shot beside the result
    resolved = {posixpath.normpath(f"{base}/{link}") for link in links}
    assert resolved == set(shots) | set(edits)  # every link points at a stored object
