"""GrokGenerateImagesTrigger and GrokAsyncHook against the simulator over real HTTP, in asyncio."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import time

import pytest

from airflow_provider_grok import api
from airflow_provider_grok.exceptions import GrokAuthError, GrokServerError
from airflow_provider_grok.hooks.grok import GrokAsyncHook
from airflow_provider_grok.testing import GrokSimulator
from airflow_provider_grok.triggers.grok import GrokGenerateImagesTrigger


def jobs_for(prompts: list[str], n: int = 1, model: str = "grok-imagine-image") -> list[dict]:
    return [
        {
            "prompt_index": i,
            "first_image_index": 0,
            "fingerprint": f"fp-{i}",
            "params": {"prompt": p, "model": model, "n": n, "response_format": "url"},
        }
        for i, p in enumerate(prompts)
    ]


async def single_event(trigger: GrokGenerateImagesTrigger) -> dict:
    events = [event async for event in trigger.run()]
    assert len(events) == 1  # exactly one event, always
    return events[0].payload


def test_serialize_round_trips_exactly():
    trigger = GrokGenerateImagesTrigger(
        grok_conn_id="grok_x", jobs=jobs_for(["a", "b"], n=3), max_concurrency=7, retry_backoff=0.5
    )
    path, kwargs = trigger.serialize()
    module, name = path.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (path, kwargs)
    assert path == "airflow_provider_grok.triggers.grok.GrokGenerateImagesTrigger"


async def test_success_event_carries_urls_and_metadata_never_bytes_or_key(xai_sim, make_conn):
    conn_id = make_conn(xai_sim)
    trigger = GrokGenerateImagesTrigger(grok_conn_id=conn_id, jobs=jobs_for(["a", "b", "c"], n=2))
    event = await single_event(trigger)

    assert event["status"] == "success"
    assert [r["outcome"] for r in event["results"]] == ["ok", "ok", "ok"]
    first = event["results"][0]
    assert (first["prompt_index"], first["first_image_index"], first["count"], first["fingerprint"]) == (
        0,
        0,
        2,
        "fp-0",
    )
    result = api.result_from_event(first["result"])
    assert [i.url.startswith(xai_sim.image_base_url) for i in result.images] == [True, True]
    assert result.images[0].mime_type == "image/jpeg" and result.usage == {"cost_in_usd_ticks": 400_000_000}
    assert result.request_ids and result.requested == 2
    payload = json.dumps(event)
    assert xai_sim.api_key not in payload and "b64_json" not in payload
    assert all(c.body["response_format"] == "url" for c in xai_sim.generation_calls)


async def test_concurrency_is_bounded(make_conn):
    with GrokSimulator(latency=0.3) as sim:
        trigger = GrokGenerateImagesTrigger(
            grok_conn_id=make_conn(sim), jobs=jobs_for(list("abcdefgh")), max_concurrency=3
        )
        event = await single_event(trigger)
    assert event["status"] == "success" and sim.peak_concurrency == 3


async def test_429_and_5xx_are_retried_in_the_trigger(xai_sim, make_conn):
    xai_sim.fail(429, times=1, retry_after=0.2)
    xai_sim.fail(503, times=1)
    trigger = GrokGenerateImagesTrigger(grok_conn_id=make_conn(xai_sim), jobs=jobs_for(["a"]), retry_backoff=0.01)
    started = time.monotonic()
    event = await single_event(trigger)
    assert time.monotonic() - started >= 0.2
    assert event["status"] == "success"
    assert [c.status for c in xai_sim.calls] == [429, 503, 200]


async def test_exhausted_retries_are_a_per_job_error(xai_sim, make_conn):
    xai_sim.fail(500, times=None, prompt_contains="bad", message="model crashed")
    conn_id = make_conn(xai_sim, max_retries=1)
    trigger = GrokGenerateImagesTrigger(grok_conn_id=conn_id, jobs=jobs_for(["good", "bad"]), retry_backoff=0.01)
    event = await single_event(trigger)
    good, bad = event["results"]
    assert good["outcome"] == "ok"
    assert bad["outcome"] == "error" and bad["error_type"] == "GrokServerError" and "model crashed" in bad["message"]


async def test_moderation_is_reported_per_job(xai_sim, make_conn):
    xai_sim.moderate(keep=0, prompt_contains="edgy")
    event = await single_event(
        GrokGenerateImagesTrigger(grok_conn_id=make_conn(xai_sim), jobs=jobs_for(["ok", "edgy"]))
    )
    assert [r["outcome"] for r in event["results"]] == ["ok", "filtered"]


async def test_auth_error_is_one_error_event(sim, make_conn):
    conn_id = make_conn(sim, api_key="not-the-key-123", model="grok-imagine" if sim.dialect == "openai" else None)
    event = await single_event(GrokGenerateImagesTrigger(grok_conn_id=conn_id, jobs=jobs_for(["a", "b", "c"])))
    assert event["status"] == "error" and event["error_type"] == "GrokAuthError"
    assert "Incorrect API key" in event["message"] and "not-the-key-123" not in json.dumps(event)
    assert len(sim.generation_calls) <= 3


async def test_broken_connection_is_one_error_event(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GROK_BROKEN", '{"conn_type": "grok", "host": "https://api.x.ai"}')
    event = await single_event(GrokGenerateImagesTrigger(grok_conn_id="grok_broken", jobs=jobs_for(["a"])))
    assert event["status"] == "error" and event["error_type"] == "GrokValidationError"
    assert "no API key" in event["message"]


async def test_cancellation_closes_the_client_promptly(make_conn, monkeypatch):
    closed = asyncio.Event()
    original = GrokAsyncHook.aclose

    async def aclose_and_signal(self: GrokAsyncHook) -> None:  # a spy on our own method, not on httpx
        await original(self)
        closed.set()

    monkeypatch.setattr(GrokAsyncHook, "aclose", aclose_and_signal)
    with GrokSimulator(latency=5) as sim:
        trigger = GrokGenerateImagesTrigger(grok_conn_id=make_conn(sim), jobs=jobs_for(["a", "b"]))

        async def consume() -> None:
            async for _ in trigger.run():
                pass

        task = asyncio.create_task(consume())
        while sim.peak_concurrency == 0:  # both requests are in flight (5 s latency)
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert closed.is_set()  # the client was closed on cancellation, before any answer arrived
        assert sim.generation_calls == []


async def test_event_for_10_prompts_of_10_images_stays_small(xai_sim, make_conn):
    trigger = GrokGenerateImagesTrigger(
        grok_conn_id=make_conn(xai_sim), jobs=jobs_for([f"prompt number {i}" for i in range(10)], n=10)
    )
    event = await single_event(trigger)
    size = len(json.dumps(event))
    print(f"event for 10 prompts x n=10: {size} bytes")
    assert sum(len(r["result"]["images"]) for r in event["results"]) == 100
    assert size < 32 * 1024  # it is stored in the metadata DB; image bytes would be ~50 MB


async def test_async_hook_shares_validation_and_errors(xai_sim, make_conn):
    hook = GrokAsyncHook(make_conn(xai_sim, max_retries=1), retry_backoff=0.01)
    try:
        with pytest.raises(api.GrokValidationError, match="Invalid resolution='4k'"):
            await hook.generate_images("x", resolution="4k")
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
            with pytest.raises(api.GrokError, match="ReadTimeout"):
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
        await asyncio.gather(*(hook.generate_images(f"p{i}") for i in range(5)))
    finally:
        await hook.aclose()
    starts = sorted(c.started for c in xai_sim.calls)
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.09


async def test_async_hook_registers_the_key_with_the_secrets_masker(xai_sim, make_conn):
    from airflow.sdk._shared.secrets_masker import redact

    hook = GrokAsyncHook(make_conn(xai_sim))
    await hook.load_settings()
    assert xai_sim.api_key not in str(redact(f"token={xai_sim.api_key}"))
