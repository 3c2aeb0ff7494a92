"""
Hostile gateways and image hosts, over real sockets to the simulator: every fault ends as a typed
GrokError, within a bounded time and memory, with the key redacted. Each test names the defect it covers.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from airflow_provider_grok.exceptions import (
    GrokImageDownloadError,
    GrokNotFoundError,
    GrokResponseError,
    GrokTransportError,
    GrokValidationError,
)
from airflow_provider_grok.hooks.grok import GrokAsyncHook, GrokHook
from airflow_provider_grok.testing import GrokSimulator


def hook(make_conn, sim: GrokSimulator, **kwargs) -> GrokHook:
    extra = kwargs.pop("extra", {})
    return GrokHook(make_conn(sim, **extra), retry_backoff=0.01, **kwargs)


def url_image(make_conn, sim: GrokSimulator, **kwargs):
    h = hook(make_conn, sim, **kwargs)
    return h, h.generate_images("x", response_format="url").images[0]


# --- the key never reaches an exception ---


def test_a_200_that_echoes_the_key_is_a_redacted_response_error(xai_sim, make_conn, capfd):
    xai_sim.misbehave("echo_key")
    with pytest.raises(GrokResponseError) as err:
        hook(make_conn, xai_sim).generate_images("x")
    text = f"{err.value} {err.value.request_id} {capfd.readouterr().out}"
    assert xai_sim.api_key not in text and "Bearer ***" in text


# --- downloads: every requests fault is a GrokError ---


def test_a_truncated_image_is_retried(xai_sim, make_conn):
    h, image = url_image(make_conn, xai_sim)
    xai_sim.misbehave_downloads("truncate", times=1)
    assert h.fetch_image(image).startswith(b"\xff\xd8")  # the second attempt got the whole image
    assert len(xai_sim.image_requests) == 2


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("redirect_loop", "TooManyRedirects"),
        ("redirect_file", "InvalidSchema"),
        ("bad_encoding", "undecodable body"),
        ("truncate", "download failed after 3 attempts"),  # truncated every time: retries run out
    ],
)
def test_download_faults_end_as_image_download_errors(xai_sim, make_conn, kind, words):
    h, image = url_image(make_conn, xai_sim, extra={"max_retries": 2})
    xai_sim.misbehave_downloads(kind, times=None)
    with pytest.raises(GrokImageDownloadError, match=words):
        h.fetch_image(image)


# --- deadlines: the connection's timeout bounds a whole attempt ---


def test_a_dripping_gateway_is_cut_off_at_the_timeout(xai_sim, make_conn):
    xai_sim.misbehave("drip", interval=0.2)
    started = time.monotonic()
    with pytest.raises(GrokTransportError, match="within the connection's timeout"):
        hook(make_conn, xai_sim, extra={"timeout": 1, "max_retries": 0}).generate_images("x")
    assert time.monotonic() - started < 5  # the body alone would take minutes at this pace


async def test_a_dripping_gateway_is_cut_off_in_the_async_hook_too(xai_sim, make_conn):
    xai_sim.misbehave("drip", interval=0.2)
    async_hook = GrokAsyncHook(make_conn(xai_sim, timeout=1, max_retries=0))
    started = time.monotonic()
    try:
        with pytest.raises(GrokTransportError, match="within the connection's timeout"):
            await async_hook.generate_images("x")
    finally:
        await async_hook.aclose()
    assert time.monotonic() - started < 5


def test_a_dripping_image_host_is_cut_off_at_the_timeout(xai_sim, make_conn):
    h, image = url_image(make_conn, xai_sim, extra={"timeout": 1, "max_retries": 0})
    xai_sim.misbehave_downloads("drip", interval=0.2)
    started = time.monotonic()
    with pytest.raises(GrokImageDownloadError, match="within the connection's timeout"):
        h.fetch_image(image)
    assert time.monotonic() - started < 5


# --- size caps ---


def test_an_oversized_api_answer_is_refused(xai_sim, make_conn):
    with pytest.raises(GrokResponseError, match="larger than the 10000-byte limit"):
        hook(make_conn, xai_sim, max_response_bytes=10_000).generate_images("x", response_format="b64_json")


def test_an_oversized_inline_image_is_refused(xai_sim, make_conn):
    h = hook(make_conn, xai_sim, max_image_bytes=10_000)
    image = h.generate_images("x", response_format="b64_json").images[0]
    with pytest.raises(GrokImageDownloadError, match="larger than the 10000-byte limit"):
        h.fetch_image(image)


# --- answers that are not what was asked ---


def test_more_images_than_asked_are_dropped_not_renumbered_over_the_next_request(xai_sim, make_conn, capfd):
    xai_sim.misbehave("extra_images", extra=1, times=1)
    result = hook(make_conn, xai_sim).generate_images("x", n=12)  # split 10 + 2; one answer has 11 images
    assert len(result.images) == 12 and [i.index for i in result.images] == list(range(12))
    assert result.extra_returned == 1 and "1 images more than" in capfd.readouterr().out


def test_moderated_placeholders_are_filtered_not_images(xai_sim, make_conn):
    xai_sim.misbehave("placeholders", count=2)
    result = hook(make_conn, xai_sim).generate_images("x", n=3)
    assert len(result.images) == 1 and result.filtered_count == 2


def test_items_without_an_image_are_a_response_error_not_moderation(xai_sim, make_conn):
    xai_sim.misbehave("no_image")
    with pytest.raises(GrokResponseError, match="no image in any of them"):
        hook(make_conn, xai_sim).generate_images("x", n=2)


def test_retry_after_nan_is_ignored_not_slept_on(xai_sim, make_conn):
    xai_sim.fail(429, times=1, retry_after="NaN")
    xai_sim.fail(429, times=1, retry_after_ms="NaN")
    assert len(hook(make_conn, xai_sim).generate_images("x").images) == 1
    assert [c.status for c in xai_sim.calls] == [429, 429, 200]


def test_an_api_redirect_is_not_followed_so_extra_headers_stay_home(xai_sim, make_conn):
    with GrokSimulator() as elsewhere:
        xai_sim.misbehave("redirect", location=f"{elsewhere.base_url}/v1/images/generations")
        conn = make_conn(xai_sim, extra_headers={"X-Team-Token": "team-secret"}, max_retries=0)
        with pytest.raises(GrokNotFoundError) as err:
            GrokHook(conn).generate_images("x")
        assert elsewhere.calls == []  # nothing, and above all no header, reached the other origin
    assert "redirected (HTTP 307)" in str(err.value) and "not followed" in str(err.value)


# --- bad input refused before any money is spent ---


def test_model_empty_string_is_refused_not_billed_as_the_default(xai_sim, make_conn):
    with pytest.raises(GrokValidationError, match="Invalid model=''"):
        hook(make_conn, xai_sim).generate_images("x", model="")
    assert xai_sim.calls == []


def test_extra_headers_with_cr_lf_fail_at_connection_validation(xai_sim, make_conn):
    conn = make_conn(xai_sim, extra_headers={"X-Trace": "a\r\nInjected: yes"})
    with pytest.raises(GrokValidationError, match="control characters"):
        GrokHook(conn).generate_images("x")
    assert xai_sim.calls == []


def test_extra_body_that_is_not_json_is_refused_before_any_call(xai_sim, make_conn):
    with pytest.raises(GrokValidationError, match=r"Invalid extra_body=.*JSON values only"):
        hook(make_conn, xai_sim).generate_images("x", extra_body={"seed": {1, 2}})
    assert xai_sim.calls == []


# --- pools sized from the concurrency actually used ---


async def test_the_async_hook_runs_as_many_requests_as_asked(make_conn):
    with GrokSimulator(latency=0.5) as sim:
        async_hook = GrokAsyncHook(make_conn(sim), max_connections=40)
        try:
            await asyncio.gather(*(async_hook.generate_images(f"p{i}") for i in range(40)))
        finally:
            await async_hook.aclose()
    assert sim.peak_concurrency == 40  # a fixed pool of 32 queued the last 8


def test_control_api_takes_hostile_faults(xai_sim):
    from airflow_provider_grok.testing import SimulatorControl

    control = SimulatorControl(xai_sim.base_url)
    control.send("POST", "misbehave", {"kind": "echo_key"})
    body = json.loads(
        __import__("requests")
        .post(
            f"{xai_sim.base_url}/v1/images/generations",
            json={"model": "grok-imagine-image", "prompt": "x"},
            headers={"Authorization": f"Bearer {xai_sim.api_key}"},
            timeout=10,
        )
        .text
    )
    assert body == {"echo": f"Bearer {xai_sim.api_key}"}
