"""GrokGenerateImagesTrigger and GrokAsyncHook against the simulator over real HTTP, in asyncio."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import time

import pytest

from airflow_provider_grok.exceptions import GrokAuthError, GrokError, GrokServerError, GrokValidationError
from airflow_provider_grok.hooks.grok import GrokAsyncHook
from airflow_provider_grok.testing import GrokSimulator
from airflow_provider_grok.triggers.grok import GrokGenerateImagesTrigger

IDENTITY = {"dag_id": "d", "task_id": "t", "run_id": "r", "map_index": -1, "try_number": 1}


def trigger_for(conn_id: str, s3, prompts: list[str], n: int = 1, cap=None, **kwargs) -> GrokGenerateImagesTrigger:
    """A trigger as the operator builds it: a stored plan of one job per prompt, storing under ``trig/``."""
    from airflow_provider_grok.protocol import GenerationParams
    from airflow_provider_grok.record import Job
    from airflow_provider_grok.storage import S3ImageStore, write_plan

    plan = [
        (
            Job(f"t1-abc123-d{i:05d}", i, 0, n, f"fp-{i}"),
            GenerationParams(prompt=p, model="grok-imagine-image", n=n, response_format="b64_json"),
        )
        for i, p in enumerate(prompts)
    ]
    key = write_plan(S3ImageStore("aws_default", s3.bucket, "trig", {}), "abc123", plan, cap)
    return GrokGenerateImagesTrigger(
        grok_conn_id=conn_id,
        aws_conn_id="aws_default",
        bucket=s3.bucket,
        prefix="trig",
        s3_extra_args={},
        identity=IDENTITY,
        plan_key=key,
        **kwargs,
    )


def all_receipts(s3) -> list[dict]:
    return [json.loads(s3.get(k)) for k in s3.object_keys("trig/_grok/requests/")]


def receipts(s3) -> dict[int, dict]:
    """The request receipts the trigger left, by prompt index (one request per prompt)."""
    return {doc["prompt_index"]: doc for doc in all_receipts(s3)}


async def single_event(trigger: GrokGenerateImagesTrigger, seconds: float = 120.0) -> dict:
    """The trigger's events, within a deadline: a trigger that never yields fails the test instead of hanging it."""

    async def collect() -> list:
        return [event async for event in trigger.run()]

    events = await asyncio.wait_for(collect(), seconds)
    assert len(events) == 1  # exactly one event, always
    return events[0].payload


async def wait_until(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_serialize_round_trips_exactly(s3):
    trigger = trigger_for("grok_x", s3, ["a", "b"], n=3, max_concurrency=7, retry_backoff=0.5)
    path, kwargs = trigger.serialize()
    module, name = path.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (path, kwargs)
    assert path == "airflow_provider_grok.triggers.grok.GrokGenerateImagesTrigger"


async def test_trigger_stores_every_answer_and_its_receipt_and_the_event_is_a_few_counts(xai_sim, make_conn, s3):
    event = await single_event(trigger_for(make_conn(xai_sim), s3, ["a", "b", "c"], n=2))

    assert event == {"version": 2, "status": "success", "sent": 3, "skipped": 0, "stop_reason": None,
                     "error_type": None, "message": None, "status_code": None}  # fmt: skip
    assert [k for k in s3.object_keys("trig/") if "_grok" not in k] == [
        f"trig/{p}-{i}.jpg" for p in range(3) for i in range(2)
    ]
    done = receipts(s3)
    assert {r["state"] for r in done.values()} == {"stored"}
    assert done[0]["usage"] == {"cost_in_usd_ticks": 400_000_000} and done[0]["request_ids"]
    assert [i["key"] for i in done[1]["images"]] == ["trig/1-0.jpg", "trig/1-1.jpg"]
    head = s3.client.head_object(Bucket=s3.bucket, Key="trig/1-1.jpg")["Metadata"]
    assert head["run-id"] == "r" and head["fingerprint"] == "fp-1" and head["request"] == "t1-abc123-d00001"
    assert xai_sim.api_key not in json.dumps(event) + json.dumps(done)


async def test_a_restarted_trigger_sends_only_what_had_no_answer(make_conn, s3):
    with GrokSimulator(latency=0.4) as sim:
        conn_id = make_conn(sim)
        first = trigger_for(conn_id, s3, list("abcdef"), max_concurrency=2)
        task = asyncio.create_task(single_event(first))
        await wait_until(lambda: sum(r["state"] == "stored" for r in receipts(s3).values()) >= 2)
        task.cancel()  # the triggerer stops: requests in flight are abandoned
        with pytest.raises(asyncio.CancelledError):
            await task
        answered_before = {i for i, r in receipts(s3).items() if r["state"] != "sent"}

        _, kwargs = first.serialize()  # a new triggerer runs it again from its kwargs
        event = await single_event(GrokGenerateImagesTrigger(**json.loads(json.dumps(kwargs))))

    assert event["status"] == "success" and event["skipped"] == len(answered_before) >= 2
    prompts = [c.prompt for c in sim.generation_calls]
    repeated = [p for p in set(prompts) if prompts.count(p) > 1]
    assert not {"abcdef"[i] for i in answered_before} & set(repeated)  # no answered request was sent again
    assert len(prompts) <= 6 + 2  # at most the requests in flight at the restart (max_concurrency) repeat
    assert len([k for k in s3.object_keys("trig/") if k.endswith(".jpg")]) == 6
    # A request sent again gets a new id: the abandoned one stays on record, unanswered, not overwritten.
    # An abandoned request may have been cut off before the gateway saw it (its receipt is written first),
    # so the gateway saw between 6 and 6 + abandoned POSTs, and every POST it saw has a receipt.
    docs = all_receipts(s3)
    assert sorted(d["prompt_index"] for d in docs if d["state"] == "stored") == list(range(6))
    abandoned = [d for d in docs if d["state"] == "sent"]
    assert len(docs) == 6 + len(abandoned) and len(abandoned) <= 2
    assert 6 <= len(prompts) <= len(docs)
    assert all(any(d["id"] == a["id"] + "-r1" for d in docs) for a in abandoned)


async def test_concurrency_is_bounded(make_conn, s3):
    with GrokSimulator(latency=0.3) as sim:
        event = await single_event(trigger_for(make_conn(sim), s3, list("abcdefgh"), max_concurrency=3))
    assert event["status"] == "success" and sim.peak_concurrency == 3


async def test_429_and_5xx_are_retried_in_the_trigger(xai_sim, make_conn, s3):
    xai_sim.fail(429, times=1, retry_after=0.2)
    xai_sim.fail(503, times=1)
    trigger = trigger_for(make_conn(xai_sim), s3, ["a"], retry_backoff=0.01)
    started = time.monotonic()
    event = await single_event(trigger)
    assert time.monotonic() - started >= 0.2
    assert event["status"] == "success"
    assert [c.status for c in xai_sim.calls] == [429, 503, 200]


async def test_exhausted_retries_fail_that_request_only(xai_sim, make_conn, s3):
    xai_sim.fail(500, times=None, prompt_contains="bad", message="model crashed")
    trigger = trigger_for(make_conn(xai_sim, max_retries=1), s3, ["good", "bad"], retry_backoff=0.01)
    event = await single_event(trigger)
    good, bad = receipts(s3)[0], receipts(s3)[1]
    assert event["status"] == "success"
    assert good["state"] == "stored"
    assert bad["state"] == "failed" and bad["error"].startswith("GrokServerError") and "model crashed" in bad["error"]
    assert bad["maybe_billed"] is False  # an HTTP 500 answer: not billed


async def test_moderation_is_recorded_per_request(xai_sim, make_conn, s3):
    xai_sim.moderate(keep=0, prompt_contains="edgy")
    await single_event(trigger_for(make_conn(xai_sim), s3, ["ok", "edgy"]))
    assert [receipts(s3)[i]["state"] for i in (0, 1)] == ["stored", "filtered"]
    assert receipts(s3)[1]["filtered"] == 1


async def test_auth_error_is_one_error_event_and_stops_the_batch(sim, make_conn, s3):
    conn_id = make_conn(sim, api_key="not-the-key-123", model="grok-imagine" if sim.dialect == "openai" else None)
    event = await single_event(trigger_for(conn_id, s3, ["a", "b", "c"], max_concurrency=1))
    assert event["status"] == "error" and event["error_type"] == "GrokAuthError"
    assert "Incorrect API key" in event["message"] and "not-the-key-123" not in json.dumps(event)
    assert len(sim.generation_calls) == 1  # one at a time: the first refusal stops the other two


async def test_broken_connection_is_one_error_event(monkeypatch, s3):
    monkeypatch.setenv("AIRFLOW_CONN_GROK_BROKEN", '{"conn_type": "grok", "host": "https://api.x.ai"}')
    event = await single_event(trigger_for("grok_broken", s3, ["a"]))
    assert event["status"] == "error" and event["error_type"] == "GrokValidationError"
    assert "no API key" in event["message"]


async def test_an_unexpected_fault_is_an_error_event_not_a_hang(xai_sim, make_conn, s3):
    trigger = trigger_for(make_conn(xai_sim), s3, ["a"])
    trigger.bucket = "no-such-bucket-anywhere"
    event = await single_event(trigger)
    assert event["status"] == "error" and event["error_type"] == "GrokStorageError"
    assert xai_sim.generation_calls == []  # the receipt could not be written, so nothing was sent


def test_events_of_another_version_read_as_a_clear_error():
    from airflow_provider_grok.triggers.grok import GenerationEvent

    event = GenerationEvent.from_payload({"status": "success", "results": []})  # the previous release's shape
    assert event.status == "error" and "different releases" in str(event.error)
    error = GenerationEvent.from_payload({"version": 1, "status": "error", "error_type": "GrokAuthError",
                                          "message": "bad key", "status_code": 401}).error  # fmt: skip
    assert type(error) is GrokAuthError and error.status == 401
    unknown = GenerationEvent.from_payload({"version": 1, "status": "error", "error_type": "os.system",
                                            "message": "x"}).error  # fmt: skip
    assert type(unknown) is GrokError  # names from the database are looked up in an explicit map only
    # A version-1 event (the previous release's trigger) still reads, its stop inferred from its error.
    old_cap = GenerationEvent.from_payload({"version": 1, "status": "error", "error_type": "GrokBudgetExceededError",
                                            "message": "max_cost_usd reached"})  # fmt: skip
    assert old_cap.stop is not None and old_cap.stop.reason == "cost_cap"
    assert type(old_cap.error).__name__ == "GrokCostCapExceededError"
    assert GenerationEvent.from_payload({"version": 3, "status": "success"}).status == "error"


async def test_cancellation_closes_the_client_promptly(make_conn, monkeypatch, s3):
    closed = asyncio.Event()
    original = GrokAsyncHook.aclose

    async def aclose_and_signal(self: GrokAsyncHook) -> None:  # a spy on our own method, not on httpx
        await original(self)
        closed.set()

    monkeypatch.setattr(GrokAsyncHook, "aclose", aclose_and_signal)
    with GrokSimulator(latency=5) as sim:
        trigger = trigger_for(make_conn(sim), s3, ["a", "b"])

        async def consume() -> None:
            async for _ in trigger.run():
                pass

        task = asyncio.create_task(consume())
        await wait_until(lambda: sim.peak_concurrency == 2)  # both requests are in flight (5 s latency)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        assert closed.is_set()  # the client was closed on cancellation, before any answer arrived
        assert sim.generation_calls == []


async def test_async_hook_shares_validation_and_errors(xai_sim, make_conn):
    hook = GrokAsyncHook(make_conn(xai_sim, max_retries=1), retry_backoff=0.01)
    try:
        with pytest.raises(GrokValidationError, match="Invalid resolution='4 K'"):
            await hook.generate_images("x", resolution="4 K")
        assert xai_sim.calls == []
        result = await hook.generate_images("x", n=25, aspect_ratio="16:9")
        assert len(result.images) == 25 and [i.index for i in result.images] == list(range(25))
        assert sorted(c.body["n"] for c in xai_sim.generation_calls) == [5, 10, 10]
        xai_sim.fail(502, times=None, body_style="html", message="bad gateway")
        with pytest.raises(GrokServerError, match="502 Bad Gateway: bad gateway"):
            await hook.generate_images("x")
    finally:
        await hook.aclose()


async def test_async_hook_reads_the_connection_asynchronously_and_honours_timeouts(make_conn):
    with GrokSimulator(latency=1.5) as sim:
        hook = GrokAsyncHook(make_conn(sim, timeout=1, max_retries=0))
        try:
            with pytest.raises(GrokError, match=r"within the connection's timeout|ReadTimeout"):
                await hook.generate_images("x")
        finally:
            await hook.aclose()
    assert hook.settings.timeout == 1


async def test_async_hook_wrong_key(xai_sim, make_conn):
    hook = GrokAsyncHook(make_conn(xai_sim, api_key="wrong-key-zz"))
    try:
        with pytest.raises(GrokAuthError):
            await hook.generate_images("x")
    finally:
        await hook.aclose()


async def test_async_rate_cap(xai_sim, make_conn):
    hook = GrokAsyncHook(make_conn(xai_sim, requests_per_second=10))
    try:
        # The first request also opens the client (~0.1 s of set-up before it reaches the gateway), which
        # would make it look bunched with the next one there: warm up first, then measure a burst.
        await hook.generate_images("warm-up")
        await asyncio.gather(*(hook.generate_images(f"p{i}") for i in range(5)))
    finally:
        await hook.aclose()
    starts = sorted(c.started for c in xai_sim.calls if c.prompt != "warm-up")
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.09


async def test_async_hook_registers_the_key_with_the_secrets_masker(xai_sim, make_conn):
    from airflow.sdk._shared.secrets_masker import redact

    hook = GrokAsyncHook(make_conn(xai_sim))
    await hook.load_settings()
    assert xai_sim.api_key not in str(redact(f"token={xai_sim.api_key}"))


async def test_the_trigger_stops_at_the_money_cap_the_worker_folded(xai_sim, make_conn, s3):
    from airflow_provider_grok.record import CostCap, RequestRecord

    cap = CostCap(0.06)  # an earlier try was billed $0.02 for one image: $0.04 left, two more images
    cap.fold([RequestRecord("t1-x-s00001", 1, 0, 0, 1, "fp", state="stored", usage={"cost_in_usd_ticks": 2 * 10**8})])
    trigger = trigger_for(make_conn(xai_sim), s3, ["a", "b", "c", "d"], cap=cap, max_concurrency=2)
    event = await single_event(trigger)

    assert event["status"] == "error" and event["error_type"] == "GrokCostCapExceededError"
    assert event["stop_reason"] == "cost_cap"
    assert event["sent"] == 2 and len(xai_sim.generation_calls) == 2
    assert xai_sim.billing()["cost_usd"] == pytest.approx(0.04)
    assert "$0.0600 billed of max_cost_usd=$0.0600" in event["message"]
