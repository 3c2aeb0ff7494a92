"""GrokHook against the simulator over real loopback HTTP: dialects, base URLs, splitting, faults, secrets."""

from __future__ import annotations

import email.utils
import itertools
import re
import time

import pytest

from airflow_provider_grok import protocol
from airflow_provider_grok.exceptions import (
    GrokAuthError,
    GrokBadRequestError,
    GrokContentFilteredError,
    GrokError,
    GrokImageDownloadError,
    GrokNotFoundError,
    GrokRateLimitError,
    GrokServerError,
    GrokTransportError,
    GrokValidationError,
)
from airflow_provider_grok.hooks.grok import GrokHook
from airflow_provider_grok.testing import GrokSimulator
from tests.support import wait_until

MODEL = {"xai": "grok-imagine-image", "openai": "grok-imagine"}
BASE_FORMS = ["", "/", "/v1", "/v1/"]


def hook_for(make_conn, sim: GrokSimulator, **kwargs) -> GrokHook:
    extra = kwargs.pop("extra", {})
    extra.setdefault("model", MODEL[sim.dialect])
    conn_id = make_conn(sim, base_suffix=kwargs.pop("base_suffix", ""), api_key=kwargs.pop("api_key", None), **extra)
    return GrokHook(conn_id, retry_backoff=0.01, **kwargs)


def jpeg_comment(data: bytes) -> str:
    """The simulator's label inside a JPEG COM segment: 'grok-simulator prompt <digest> call <k> image <i>'."""
    assert data[2:4] == b"\xff\xfe"
    length = int.from_bytes(data[4:6], "big")
    return data[6 : 4 + length].decode()


@pytest.mark.parametrize("base_suffix", BASE_FORMS)
@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_every_base_url_form_and_format_in_both_dialects(sim, make_conn, base_suffix, response_format):
    hook = hook_for(make_conn, sim, base_suffix=base_suffix)
    result = hook.generate_images("a lighthouse at dawn", n=2, response_format=response_format)

    assert [c.path for c in sim.calls] == ["/v1/images/generations"]
    assert sim.calls[0].body == {
        "model": MODEL[sim.dialect],
        "prompt": "a lighthouse at dawn",
        "n": 2,
        "response_format": response_format,
    }
    assert result.requested == 2 and [i.index for i in result.images] == [0, 1]
    assert result.request_ids == ["sim-1"]
    for image in result.images:
        assert (image.url is not None) == (response_format == "url")
        data = hook.fetch_image(image)
        assert protocol.sniff_image_type(data).mime_type == "image/jpeg"
    if sim.dialect == "openai":
        assert result.images[0].revised_prompt.endswith("a lighthouse at dawn")
        assert result.usage is None
    else:
        assert result.images[0].mime_type == "image/jpeg"
        assert result.cost_usd == pytest.approx(0.04)


def test_dialect_specific_fields_reach_the_gateway(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim)
    hook.generate_images("x", aspect_ratio="16:9", resolution="2k", quality="low", user="u-1")
    assert xai_sim.calls[0].body == {
        "model": "grok-imagine-image",
        "prompt": "x",
        "n": 1,
        "response_format": "url",
        "aspect_ratio": "16:9",
        "resolution": "2k",
        "quality": "low",
        "user": "u-1",
    }


def test_unsupported_field_is_the_gateways_400_not_retried(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim)
    with pytest.raises(GrokBadRequestError, match="Argument not supported: size") as err:
        hook.generate_images("x", size="1024x1024")
    assert err.value.status == 400 and len(xai_sim.calls) == 1


def test_n_25_is_split_10_10_5_and_renumbered_in_order(sim, make_conn):
    hook = hook_for(make_conn, sim)
    result = hook.generate_images("many cats", n=25, response_format="b64_json")

    assert sorted(c.body["n"] for c in sim.generation_calls) == [5, 10, 10]
    assert result.requested == 25 and len(result.images) == 25
    assert [i.index for i in result.images] == list(range(25))
    labels = [jpeg_comment(hook.fetch_image(i)) for i in result.images]
    # Chunks keep their order: images 0-9 are one request's 0-9, 10-19 the next, 20-24 the 5-image one.
    within = [int(re.search(r"image (\d+)", label).group(1)) for label in labels]
    assert within == list(range(10)) + list(range(10)) + list(range(5))
    calls = [int(re.search(r"call (\d+)", label).group(1)) for label in labels]
    assert len({*calls[:10]}) == len({*calls[10:20]}) == len({*calls[20:]}) == 1
    assert sorted(set(calls)) == [0, 1, 2]
    assert len(result.request_ids) == 3
    assert len({hook.fetch_image(i) for i in result.images}) == 25  # every image distinct


def test_split_requests_run_concurrently(make_conn):
    with GrokSimulator(latency=0.4) as sim:
        hook = hook_for(make_conn, sim)
        hook.generate_images("x", n=30)
    assert sim.peak_concurrency == 3  # all three chunks were in flight at once


def test_failed_chunk_keeps_what_other_chunks_made(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim, extra={"max_retries": 0})
    xai_sim.fail(500, times=1)
    with pytest.raises(GrokServerError) as err:
        hook.generate_images("x", n=25)
    partial = err.value.partial_result
    # Whichever chunk failed (a 10 or the 5), the other two chunks' images are kept.
    assert partial is not None and len(partial.images) in (15, 20)
    assert len(xai_sim.generation_calls) == 3
    assert [i.index for i in partial.images] == list(range(len(partial.images)))


def test_429_retry_after_seconds_is_honoured(xai_sim, make_conn, capfd):
    hook = hook_for(make_conn, xai_sim)
    xai_sim.fail(429, retry_after=1)
    started = time.monotonic()
    result = hook.generate_images("x")
    assert time.monotonic() - started >= 1.0
    assert [c.status for c in xai_sim.calls] == [429, 200] and len(result.images) == 1
    gap = xai_sim.calls[1].started - xai_sim.calls[0].finished
    assert gap >= 0.95
    logs = capfd.readouterr().out
    assert "failed (HTTP 429); retry 1 of 3 in 1.0 s" in logs


def test_429_retry_after_http_date_and_ms(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim)
    xai_sim.fail(429, retry_after=email.utils.formatdate(time.time() + 2, usegmt=True))
    xai_sim.fail(503, retry_after_ms=300)
    started = time.monotonic()
    hook.generate_images("x")
    # The HTTP date is whole seconds, so it asks for 1-2 s; then 0.3 s more.
    assert time.monotonic() - started >= 1.3
    assert [c.status for c in xai_sim.calls] == [429, 503, 200]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409])
def test_transient_statuses_retried_then_succeed(xai_sim, make_conn, status, capfd):
    hook = hook_for(make_conn, xai_sim)
    xai_sim.fail(status, times=2)
    assert len(hook.generate_images("x").images) == 1
    assert [c.status for c in xai_sim.calls] == [status, status, 200]
    logs = capfd.readouterr().out
    assert f"(HTTP {status}); retry 1 of 3" in logs and f"(HTTP {status}); retry 2 of 3" in logs


def test_retries_exhausted_raise_server_error_with_servers_message(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim, extra={"max_retries": 2})
    xai_sim.fail(503, times=None, message="upstream GPU pool exhausted")
    with pytest.raises(GrokServerError) as err:
        hook.generate_images("x")
    assert len(xai_sim.calls) == 3
    assert err.value.status == 503 and err.value.server_message == "upstream GPU pool exhausted"
    assert "after 3 attempts" in str(err.value) and err.value.request_id == "sim-3"


def test_rate_limit_exhausted_is_a_rate_limit_error(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim, extra={"max_retries": 1})
    xai_sim.fail(429, times=None, retry_after=0)
    with pytest.raises(GrokRateLimitError, match="requests_per_second"):
        hook.generate_images("x")
    assert len(xai_sim.calls) == 2


def test_content_policy_400_is_not_retried(sim, make_conn):
    hook = hook_for(make_conn, sim)
    sim.fail(400, message="Prompt rejected: content policy violation", times=None)
    with pytest.raises(GrokContentFilteredError, match="content policy violation"):
        hook.generate_images("x")
    assert len(sim.calls) == 1


def test_wrong_key_is_an_auth_error_in_both_dialects(sim, make_conn):
    hook = hook_for(make_conn, sim, api_key="wrong-key-abcdef")
    with pytest.raises(GrokAuthError, match="Incorrect API key") as err:
        hook.generate_images("x")
    # xAI answers 400 for a bad key, the OpenAI-style gateway 401: both are auth errors, neither retried.
    assert err.value.status == (400 if sim.dialect == "xai" else 401)
    assert len(sim.calls) == 1


def test_unknown_model_is_not_found(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim)
    with pytest.raises(GrokNotFoundError, match=r"does not exist.*model name and the connection's base URL"):
        hook.generate_images("x", model="grok-3-imagine-ultra")


def test_doubled_v1_path_is_a_readable_404(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim, base_suffix="/v1/v1")
    with pytest.raises(GrokNotFoundError, match="No route"):
        hook.generate_images("x")
    assert xai_sim.calls[0].path == "/v1/v1/images/generations"


def test_html_502_reads_as_text(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim, extra={"max_retries": 1})
    xai_sim.fail(502, times=None, body_style="html", message="Upstream unavailable")
    with pytest.raises(GrokServerError) as err:
        hook.generate_images("x")
    assert err.value.server_message == "502 Bad Gateway: Upstream unavailable"
    assert "<" not in str(err.value)


def test_plain_text_error(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim)
    xai_sim.fail(422, body_style="text", message="field n: must be an integer")
    with pytest.raises(GrokBadRequestError, match="HTTP 422: field n: must be an integer"):
        hook.generate_images("x")


def test_dropped_connection_is_retried(xai_sim, make_conn, capfd):
    hook = hook_for(make_conn, xai_sim)
    xai_sim.drop_connections(times=1)
    assert len(hook.generate_images("x").images) == 1
    assert [c.status for c in xai_sim.calls] == [None, 200]
    assert "ConnectionError" in capfd.readouterr().out


def test_under_a_money_cap_a_request_without_answer_is_not_retried(xai_sim, make_conn):
    hook = GrokHook(make_conn(xai_sim), retry_unanswered=False)  # what the operator builds for max_cost_usd
    xai_sim.drop_connections(times=1)
    with pytest.raises(GrokTransportError, match="may have billed it and the task has a max_cost_usd"):
        hook.generate_images("x")
    assert [c.status for c in xai_sim.calls] == [None]  # sent once: the retry is Airflow's, within the cap
    xai_sim.fail(503, times=1, retry_after=0)
    assert len(hook.generate_images("y").images) == 1  # an error answer is not billed: retried as always


def test_dropped_connections_exhausted_is_a_transport_error(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim, extra={"max_retries": 1})
    xai_sim.drop_connections(times=None)
    with pytest.raises(GrokTransportError, match="no HTTP answer after 2 attempts"):
        hook.generate_images("x")


def test_unreachable_gateway_is_a_transport_error(make_conn, monkeypatch):
    with GrokSimulator() as sim:
        conn_id = make_conn(sim, max_retries=0)
    hook = GrokHook(conn_id)  # the simulator has stopped: nothing listens on its port
    with pytest.raises(GrokTransportError, match="Check the connection's base URL"):
        hook.generate_images("x")


def test_read_timeout_is_the_connections_timeout_extra(make_conn):
    with GrokSimulator(latency=1.5) as sim:
        hook = hook_for(make_conn, sim, extra={"timeout": 1, "max_retries": 0})
        with pytest.raises(GrokTransportError, match="ReadTimeout"):
            hook.generate_images("x")


def test_partial_moderation_is_recorded_and_warned(xai_sim, make_conn, capfd):
    hook = hook_for(make_conn, xai_sim)
    xai_sim.moderate(keep=1)
    result = hook.generate_images("x", n=3)
    assert result.requested == 3 and len(result.images) == 1 and result.filtered_count == 2
    assert result.cost_usd == pytest.approx(0.06)  # still billed for 3
    assert len(xai_sim.calls) == 1  # not retried: moderation is not transient
    assert "Content moderation removed 2 of 3 images" in capfd.readouterr().out


def test_total_moderation_raises_content_filtered(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim)
    xai_sim.moderate(keep=0)
    with pytest.raises(GrokContentFilteredError, match="no images for the prompt"):
        hook.generate_images("x", n=2)
    assert len(xai_sim.calls) == 1


def test_prefixed_b64_is_decoded(make_conn):
    with GrokSimulator(b64_prefix=True, image_format="png") as sim:
        hook = hook_for(make_conn, sim)
        image = hook.generate_images("x", response_format="b64_json").images[0]
        assert image.mime_type == "image/png" and not image.b64_json.startswith("data:")
        assert hook.fetch_image(image).startswith(b"\x89PNG")


def test_validation_happens_before_any_request(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim)
    with pytest.raises(GrokValidationError, match="Invalid aspect_ratio='5 by 4'"):
        hook.generate_images("x", aspect_ratio="5 by 4")
    with pytest.raises(GrokValidationError, match="Invalid prompt"):
        hook.generate_images("")
    assert xai_sim.calls == []


def test_requests_per_second_caps_request_starts(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim, extra={"requests_per_second": 5})
    hook.generate_images("x", n=50, response_format="url")  # 5 concurrent chunk requests
    starts = sorted(c.started for c in xai_sim.calls)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 5 and min(gaps) >= 0.18


def test_extra_headers_reach_the_api_but_never_the_image_host(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim, extra={"extra_headers": {"X-Tenant": "acme"}})
    result = hook.generate_images("x", n=2)
    for image in result.images:
        hook.fetch_image(image)
    api_headers = {k.lower(): v for k, v in xai_sim.calls[0].headers.items()}
    assert api_headers["authorization"] == f"Bearer {xai_sim.api_key}"
    assert api_headers["x-tenant"] == "acme"
    assert len(xai_sim.image_requests) == 2
    for request in xai_sim.image_requests:
        sent = {k.lower(): v for k, v in request.headers.items()}
        assert "authorization" not in sent and "x-tenant" not in sent
        assert xai_sim.api_key not in str(request.headers)


def test_oversized_download_is_rejected(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim, max_image_bytes=10_000)
    image = hook.generate_images("x").images[0]
    with pytest.raises(GrokImageDownloadError, match="larger than the 10000-byte limit"):
        hook.fetch_image(image)
    assert len(xai_sim.image_requests) == 1  # not retried


def test_non_image_download_is_rejected(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim)
    image = hook.generate_images("x").images[0]
    xai_sim.serve_non_images(times=None)
    with pytest.raises(GrokImageDownloadError, match=r"not a JPEG, PNG or WebP image .*b'<html>"):
        hook.fetch_image(image)


def test_expired_url_is_a_download_error_not_retried(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim)
    image = hook.generate_images("x").images[0]
    xai_sim.expire_urls()
    with pytest.raises(GrokImageDownloadError, match=r"expired.*b64_json") as err:
        hook.fetch_image(image)
    assert err.value.status == 403 and len(xai_sim.image_requests) == 1


def test_transient_download_faults_are_retried(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim)
    image = hook.generate_images("x").images[0]
    xai_sim.fail_downloads(503, times=2)
    assert hook.fetch_image(image)[:3] == b"\xff\xd8\xff"
    assert [r.status for r in xai_sim.image_requests] == [503, 503, 200]


def test_download_faults_exhausted(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim, extra={"max_retries": 1})
    image = hook.generate_images("x").images[0]
    xai_sim.fail_downloads(500, times=None)
    with pytest.raises(GrokImageDownloadError, match="after 2 attempts"):
        hook.fetch_image(image)


def test_key_never_in_logs_or_exceptions(xai_sim, make_conn, capfd):
    key = xai_sim.api_key
    hook = hook_for(make_conn, xai_sim, extra={"max_retries": 1})
    # A gateway that echoes the key back in its error body: the provider must still not repeat it.
    xai_sim.fail(500, times=None, message=f"upstream rejected Bearer {key}")
    errors: list[GrokError] = []
    with pytest.raises(GrokServerError) as err:
        hook.generate_images("x")
    errors.append(err.value)
    xai_sim.reset()
    xai_sim.fail(400, message=f"Incorrect API key provided: {key}")
    with pytest.raises(GrokAuthError) as err:
        hook.generate_images("x")
    errors.append(err.value)
    xai_sim.reset()
    hook.generate_images("x", n=2)  # plus the ordinary success logs
    hook.test_connection()
    output = capfd.readouterr()
    for error in errors:
        assert key not in str(error) and key not in repr(error) and key not in (error.server_message or "")
        assert "***" in str(error)
    assert key not in output.out and key not in output.err
    assert key not in repr(hook.settings)


def test_key_is_registered_with_the_secrets_masker(xai_sim, make_conn):
    from airflow.sdk._shared.secrets_masker import redact

    hook = hook_for(make_conn, xai_sim)
    _ = hook.settings
    assert xai_sim.api_key not in str(redact(f"token={xai_sim.api_key}"))


def test_unknown_extras_are_warned_about(xai_sim, make_conn, capfd):
    hook = hook_for(make_conn, xai_sim, extra={"max_retry": 5})
    _ = hook.settings
    assert "extras this provider does not know and ignores: max_retry" in capfd.readouterr().out


# --- test_connection ---


def test_test_connection_succeeds_without_generating(sim, make_conn):
    ok, message = hook_for(make_conn, sim).test_connection()
    assert ok and "API key was accepted" in message
    assert [(c.method, c.path) for c in sim.calls] == [("GET", "/v1/models")]


def test_test_connection_names_unknown_extras_in_its_answer(xai_sim, make_conn):
    ok, message = hook_for(make_conn, xai_sim, extra={"max_retry": 5, "colour": "red"}).test_connection()
    assert not ok and "API key was accepted" in message  # it connected, but the typo must not pass silently
    assert "'max_retry' (did you mean 'max_retries'?)" in message and "'colour'" in message


def test_log_lines_carry_the_label_of_the_call(xai_sim, make_conn, capfd):
    from airflow_provider_grok.hooks.grok import log_label

    xai_sim.fail(503, times=1)
    with log_label("Prompt 7"):
        hook_for(make_conn, xai_sim).generate_images("x", n=12)  # split: the label reaches the pool's threads
    logs = capfd.readouterr().out
    assert "Prompt 7: Grok POST" in logs and "Prompt 7: Generated 12 of 12 images" in logs


def test_test_connection_wrong_key(sim, make_conn):
    ok, message = hook_for(make_conn, sim, api_key="nope-nope-nope").test_connection()
    assert not ok and "rejected the API key" in message and "Incorrect API key" in message
    assert sim.generation_calls == []


def test_test_connection_without_models_endpoint(make_conn):
    with GrokSimulator(models_endpoint=False) as sim:
        ok, message = hook_for(make_conn, sim).test_connection()
    assert ok and "could not be verified without generating" in message
    assert sim.generation_calls == []


def test_test_connection_unreachable_and_misconfigured(make_conn, monkeypatch):
    with GrokSimulator() as sim:
        conn_id = make_conn(sim)
    ok, message = GrokHook(conn_id).test_connection()
    assert not ok and "Could not reach the gateway" in message
    monkeypatch.setenv("AIRFLOW_CONN_GROK_NOKEY", '{"conn_type": "grok", "host": "https://api.x.ai"}')
    ok, message = GrokHook("grok_nokey").test_connection()
    assert not ok and "no API key" in message


def test_connection_uri_form_with_port(xai_sim, monkeypatch):
    host, port = xai_sim.base_url.removeprefix("http://").split(":")
    # URI form loses the scheme; host and port arrive separately. An explicit http:// in the host keeps it.
    monkeypatch.setenv("AIRFLOW_CONN_GROK_URI", f"grok://:{xai_sim.api_key}@http%3A%2F%2F{host}:{port}")
    hook = GrokHook("grok_uri")
    assert hook.settings.base_url.startswith("http://127.0.0.1")
    assert len(hook.generate_images("x").images) == 1


def test_unknown_generation_parameter_is_refused_before_sending(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim)
    with pytest.raises(GrokValidationError, match=r"Unknown generation parameter aspect:.*aspect_ratio"):
        hook.generate_images("x", aspect="16:9")  # type: ignore[call-arg]
    assert xai_sim.calls == []


def test_operator_generation_fields_are_the_hooks_options():
    from airflow_provider_grok.operators.generate import GENERATION_FIELDS
    from airflow_provider_grok.protocol import GenerationOptions

    # The operator lists them literally to stay import-light at DAG parse time; they must not drift.
    assert set(GENERATION_FIELDS) == set(GenerationOptions.__annotations__)


def test_an_attempt_whose_answer_never_arrived_is_counted(xai_sim, make_conn):
    # The gateway generates (and bills) the first attempt, but its answer comes after the client gave up.
    hook = hook_for(make_conn, xai_sim, extra={"timeout": 1, "max_retries": 1})
    xai_sim.slow_down(2.5, times=1)
    result = hook.generate_images("slow")
    assert result.unanswered_attempts == 1
    wait_until("the abandoned attempt to finish", lambda: xai_sim.in_flight == 0, 10)
    assert xai_sim.billing()["requests_billed"] == 2  # both attempts were billed: the count says so


def test_a_failure_carries_its_unanswered_attempts(xai_sim, make_conn):
    hook = hook_for(make_conn, xai_sim, extra={"timeout": 1, "max_retries": 2})
    xai_sim.slow_down(1.5, times=None)
    with pytest.raises(GrokTransportError) as err:
        hook.generate_images("never")
    assert err.value.unanswered_attempts == 2  # the last one is the request's own "may have been billed"
