"""The protocol core, exhaustively and without any network: tables of inputs and what they must give."""

from __future__ import annotations

import base64
import email.utils
import json

import pytest

from airflow_provider_grok import protocol
from airflow_provider_grok.exceptions import (
    GrokAuthError,
    GrokBadRequestError,
    GrokContentFilteredError,
    GrokImageDownloadError,
    GrokNotFoundError,
    GrokRateLimitError,
    GrokResponseError,
    GrokServerError,
    GrokValidationError,
)
from airflow_provider_grok.protocol import GenerationParams, RetryPolicy

pytestmark = pytest.mark.sansio

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 20
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 20


def params(**kw):
    return GenerationParams(**{"prompt": "a cat", "model": "m", **kw})


# --- validation ---


@pytest.mark.parametrize(
    ("kwargs", "param", "allowed"),
    [
        ({"prompt": ""}, "prompt", "non-empty"),
        ({"prompt": "   "}, "prompt", "non-empty"),
        ({"prompt": None}, "prompt", "non-empty"),
        ({"prompt": ["a"]}, "prompt", "non-empty"),
        ({"model": ""}, "model", "model name"),
        ({"n": 0}, "n", "1 to 100"),
        ({"n": 101}, "n", "1 to 100"),
        ({"n": -3}, "n", "1 to 100"),
        ({"n": 2.0}, "n", "integer"),
        ({"n": "2"}, "n", "integer"),
        ({"n": True}, "n", "integer"),
        ({"response_format": "png"}, "response_format", "url, b64_json"),
        ({"aspect_ratio": "wide"}, "aspect_ratio", "W:H such as 16:9, or auto"),
        ({"aspect_ratio": "16x9"}, "aspect_ratio", "W:H"),
        ({"aspect_ratio": ""}, "aspect_ratio", "W:H"),
        ({"resolution": "high"}, "resolution", "<number>k such as 1k or 2k"),
        ({"resolution": "2K"}, "resolution", "<number>k"),
        ({"resolution": 2}, "resolution", "<number>k"),
        ({"size": "big"}, "size", "WIDTHxHEIGHT"),
        ({"quality": ""}, "quality", "a lowercase word"),
        ({"quality": "ultra hd!"}, "quality", "a lowercase word"),
        ({"extra_body": {"seed": {1, 2}}}, "extra_body", "JSON values only"),
        ({"extra_body": {"guidance": float("nan")}}, "extra_body", "JSON values only"),
        ({"size": "1024x1024", "aspect_ratio": "1:1"}, "size", "cannot be combined"),
        ({"size": "1024x1024", "resolution": "1k"}, "size", "cannot be combined"),
        ({"user": 42}, "user", "string"),
        ({"extra_body": ["seed"]}, "extra_body", "dict"),
        ({"extra_body": {"n": 3}}, "extra_body", "n must be passed as parameters"),
        ({"extra_body": {"prompt": "x", "model": "y"}}, "extra_body", "model, prompt must be passed"),
    ],
)
def test_invalid_parameters_name_parameter_value_and_allowed(kwargs, param, allowed):
    with pytest.raises(GrokValidationError) as err:
        params(**kwargs)
    message = str(err.value)
    assert message.startswith(f"Invalid {param}=")
    assert repr(kwargs[param]) in message
    assert allowed in message


def test_validation_error_is_also_a_value_error():
    with pytest.raises(ValueError):
        params(n=0)


def test_huge_values_are_shortened_in_messages():
    with pytest.raises(GrokValidationError) as err:
        params(aspect_ratio="x" * 10_000)
    assert len(str(err.value)) < 400


# The values xAI documents today (shared/API.md), written out: not read back from the provider's own list.
@pytest.mark.parametrize(
    ("name", "value"),
    [
        *(
            ("aspect_ratio", v)
            for v in (
                "1:1",
                "16:9",
                "9:16",
                "4:3",
                "3:4",
                "3:2",
                "2:3",
                "2:1",
                "1:2",
                "19.5:9",
                "9:19.5",
                "20:9",
                "9:20",
                "21:9",
                "5:2",
                "auto",
            )
        ),
        *(("resolution", v) for v in ("1k", "1.5k", "2k")),
        *(("quality", v) for v in ("standard", "hd", "low", "medium", "auto")),
        *(("size", v) for v in ("1024x1024", "1536x1024", "1024x1536")),
    ],
)
def test_every_documented_value_is_accepted_without_a_warning(name, value):
    p = params(**{name: value})
    assert p.request_bodies()[0][name] == value
    assert protocol.unknown_values(p) == []


@pytest.mark.parametrize(
    ("name", "value"), [("aspect_ratio", "5:4"), ("resolution", "4k"), ("size", "512x512"), ("quality", "ultra")]
)
def test_a_well_formed_unknown_value_is_sent_with_a_warning(name, value):
    p = params(**{name: value})
    assert p.request_bodies()[0][name] == value  # xAI adds values every few months: do not refuse them
    (warning,) = protocol.unknown_values(p)
    assert warning.startswith(f"{name}={value!r} is not a value this provider knows")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {"model": "m", "prompt": "a cat", "n": 1, "response_format": "url"}),
        (
            {"n": 3, "response_format": "b64_json", "aspect_ratio": "16:9", "resolution": "2k"},
            {
                "model": "m",
                "prompt": "a cat",
                "n": 3,
                "response_format": "b64_json",
                "aspect_ratio": "16:9",
                "resolution": "2k",
            },
        ),
        (
            {"size": "1536x1024", "quality": "hd", "user": "u1"},
            {
                "model": "m",
                "prompt": "a cat",
                "n": 1,
                "response_format": "url",
                "size": "1536x1024",
                "quality": "hd",
                "user": "u1",
            },
        ),
        (
            {"extra_body": {"seed": 7}},
            {"model": "m", "prompt": "a cat", "n": 1, "response_format": "url", "seed": 7},
        ),
    ],
)
def test_body_carries_only_fields_the_user_set(kwargs, expected):
    assert params(**kwargs).request_bodies() == [expected]


@pytest.mark.parametrize(
    ("n", "chunks"),
    [(1, [1]), (9, [9]), (10, [10]), (11, [10, 1]), (20, [10, 10]), (25, [10, 10, 5]), (100, [10] * 10)],
)
def test_split_n(n, chunks):
    assert protocol.split_n(n) == chunks
    assert [b["n"] for b in params(n=n).request_bodies()] == chunks


# --- URLs ---


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://h", "https://h/v1/images/generations"),
        ("https://h/", "https://h/v1/images/generations"),
        ("https://h/v1", "https://h/v1/images/generations"),
        ("https://h/v1/", "https://h/v1/images/generations"),
        ("https://h//", "https://h/v1/images/generations"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/images/generations"),
        ("https://gw.example/openai", "https://gw.example/openai/v1/images/generations"),
        ("https://gw.example/openai/v1/", "https://gw.example/openai/v1/images/generations"),
        ("https://h/v1/images/generations", "https://h/v1/images/generations"),
        ("  https://h/v1  ", "https://h/v1/images/generations"),
        ("https://h/v1?api-version=2", "https://h/v1/images/generations?api-version=2"),
    ],
)
def test_base_url_forms_reach_the_endpoint(base, expected):
    assert protocol.endpoint_url(base, protocol.GENERATIONS_PATH) == expected


@pytest.mark.parametrize("base", ["api.x.ai", "ftp://h", "https://", "file:///etc/passwd", ""])
def test_invalid_base_urls_are_refused(base):
    with pytest.raises(GrokValidationError, match="base URL"):
        protocol.endpoint_url(base, protocol.GENERATIONS_PATH)


# --- connection settings ---


def test_settings_defaults_and_scheme():
    settings, unknown = protocol.settings_from_connection("api.x.ai", "k" * 10, None)
    assert settings.base_url == "https://api.x.ai"
    assert settings.model == protocol.DEFAULT_MODEL
    assert settings.timeout == protocol.DEFAULT_READ_TIMEOUT >= 120
    assert settings.max_retries == protocol.DEFAULT_MAX_RETRIES
    assert settings.requests_per_second is None
    assert unknown == []
    assert "k" * 10 not in repr(settings)


def test_settings_parse_string_extras_from_the_ui():
    extra = {
        "model": " grok-imagine ",
        "timeout": "600",
        "max_retries": "5",
        "requests_per_second": "2.5",
        "extra_headers": '{"X-Org": "acme"}',
        "extra__grok__max_retries": None,
    }
    settings, unknown = protocol.settings_from_connection("https://gw/v1", "key-123", extra)
    assert (settings.model, settings.timeout, settings.max_retries) == ("grok-imagine", 600, 5)
    assert settings.requests_per_second == 2.5
    assert settings.api_headers()["X-Org"] == "acme"
    assert settings.api_headers()["Authorization"] == "Bearer key-123"
    assert unknown == []


def test_settings_accept_prefixed_extras_and_report_unknown_ones():
    settings, unknown = protocol.settings_from_connection(
        "https://h", "key", {"extra__grok__model": "x", "max_retry": 9}
    )
    assert settings.model == "x"
    assert unknown == ["max_retry"]


@pytest.mark.parametrize(
    ("host", "password", "extra", "match"),
    [
        (None, "k", {}, "no host"),
        ("  ", "k", {}, "no host"),
        ("https://h", None, {}, "no API key"),
        ("https://h", "", {}, "no API key"),
        ("https://h", "k", {"timeout": "soon"}, "'timeout'.*number >= 1"),
        ("https://h", "k", {"timeout": 0}, "'timeout'"),
        ("https://h", "k", {"max_retries": -1}, "'max_retries'.*integer >= 0"),
        ("https://h", "k", {"max_retries": 1.5}, "'max_retries'"),
        ("https://h", "k", {"max_retries": True}, "'max_retries'"),
        ("https://h", "k", {"requests_per_second": "nan"}, "'requests_per_second'"),
        ("https://h", "k", {"extra_headers": "{not json"}, "not valid JSON"),
        ("https://h", "k", {"extra_headers": '["a"]'}, "JSON object of strings"),
        ("https://h", "k", {"extra_headers": {"X-N": 1}}, "JSON object of strings"),
        ("https://h", "k", {"extra_headers": {"authorization": "Bearer x"}}, "Authorization"),
        ("https://h", "k", {"model": 5}, "'model'"),
    ],
)
def test_bad_connections_are_refused_clearly(host, password, extra, match):
    with pytest.raises(GrokValidationError, match=match):
        protocol.settings_from_connection(host, password, extra)


# --- responses ---


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_moderated_placeholders_are_filtered_not_images_and_extra_images_are_dropped():
    placeholder = {"url": "https://img/placeholder.jpg", "respect_moderation": False}
    payload = {"data": [{"url": "https://img/1.jpg", "respect_moderation": True}, placeholder, placeholder]}
    result = protocol.parse_generation_response(payload, requested=3)
    assert [i.url for i in result.images] == ["https://img/1.jpg"] and result.filtered_count == 2
    too_many = {"data": [{"url": f"https://img/{i}.jpg"} for i in range(12)]}
    result = protocol.parse_generation_response(too_many, requested=10)
    assert len(result.images) == 10 and result.extra_returned == 2 and result.filtered_count == 0


def test_a_200_that_is_not_a_generation_answer_is_redacted():
    key = "xai-secret-key-1234567890"
    with pytest.raises(GrokResponseError) as err:
        protocol.parse_generation_response({"echo": f"Bearer {key}"}, requested=1, secret=key)
    assert key not in str(err.value) and "***" in str(err.value)
    assert protocol.request_id_from_headers({"x-request-id": f"id-{key}"}, key) == "id-***"


@pytest.mark.parametrize("headers", [{"Retry-After": "NaN"}, {"retry-after-ms": "NaN"}, {"Retry-After": "inf"}])
def test_a_retry_after_that_is_not_a_finite_number_is_ignored(headers):
    assert protocol.retry_after_seconds(headers, now=NOW) is None
    policy = protocol.RetryPolicy(max_retries=2, backoff_base=0.5)
    assert policy.delay(0, status=429, headers=headers, rng=lambda: 0.5, now=NOW) is not None


def test_an_inline_image_over_the_cap_is_refused_before_decoding():
    with pytest.raises(GrokImageDownloadError, match="larger than the 100-byte limit"):
        protocol.decode_b64_image(b64(PNG * 50), "Image 0", limit=100)


def test_parse_url_and_b64_items_with_optional_fields():
    payload = {
        "created": 1717000000,
        "model": "grok-imagine-image",
        "data": [
            {"url": "https://img/1.jpg", "revised_prompt": "", "mime_type": "image/jpeg"},
            {"b64_json": b64(PNG), "revised_prompt": "a cat, revised"},
            {"b64_json": "data:image/webp;base64," + b64(WEBP)},
            {"revised_prompt": "filtered item without image"},
            "junk",
        ],
        "usage": {"cost_in_usd_ticks": 600_000_000},
    }
    result = protocol.parse_generation_response(payload, requested=5, request_id="r1")
    assert [i.index for i in result.images] == [0, 1, 2]
    first, second, third = result.images
    assert (first.url, first.revised_prompt, first.mime_type) == ("https://img/1.jpg", None, "image/jpeg")
    assert (second.b64_json, second.revised_prompt, second.mime_type) == (b64(PNG), "a cat, revised", None)
    assert (third.b64_json, third.mime_type) == (b64(WEBP), "image/webp")
    # Items with no image are malformed, not moderation (xAI marks moderated placeholders explicitly).
    assert result.requested == 5 and result.malformed == 2 and result.filtered_count == 0
    assert result.cost_usd == pytest.approx(0.06)
    assert (result.created, result.model, result.request_ids) == (1717000000, "grok-imagine-image", ["r1"])


@pytest.mark.parametrize("payload", [None, [], "ok", {"images": []}, {"data": "x"}])
def test_malformed_200_bodies_raise_response_error(payload):
    with pytest.raises(GrokResponseError, match="'data' list"):
        protocol.parse_generation_response(payload, requested=1)


def test_merge_renumbers_in_order_and_sums_usage():
    def part(urls, ticks, rid):
        data = {
            "data": [{"url": u} for u in urls],
            "usage": {"cost_in_usd_ticks": ticks, "detail": {"images": len(urls)}},
        }
        return protocol.parse_generation_response(data, requested=len(urls), request_id=rid)

    merged = protocol.merge_results([part(["a", "b"], 2, "r1"), part(["c"], 1, "r2")])
    assert [(i.index, i.url) for i in merged.images] == [(0, "a"), (1, "b"), (2, "c")]
    assert merged.usage == {"cost_in_usd_ticks": 3, "detail": {"images": 3}}
    assert merged.requested == 3 and merged.request_ids == ["r1", "r2"]


# --- errors ---


@pytest.mark.parametrize(
    ("status", "body", "ctype", "cls", "said"),
    [
        (
            400,
            '{"error": {"message": "Invalid size", "type": "invalid_request_error", "code": null}}',
            "application/json",
            GrokBadRequestError,
            "Invalid size",
        ),
        (
            400,
            '{"code": "Client specified an invalid argument", "error": "Argument not supported: size"}',
            "application/json",
            GrokBadRequestError,
            "Argument not supported: size",
        ),
        (
            400,
            '{"code": "Client specified an invalid argument", "error": "Incorrect API key provided: xa***yz"}',
            "application/json",
            GrokAuthError,
            "Incorrect API key provided",
        ),
        (
            400,
            '{"error": {"message": "Your request was rejected by our safety system", '
            '"code": "content_policy_violation"}}',
            "application/json",
            GrokContentFilteredError,
            "safety system",
        ),
        (
            400,
            '{"error": "Generated image rejected by content moderation."}',
            "application/json",
            GrokContentFilteredError,
            "content moderation",
        ),
        (
            401,
            '{"error": {"message": "Invalid API key", "code": "invalid_api_key"}}',
            "application/json",
            GrokAuthError,
            "Invalid API key",
        ),
        (403, "Forbidden", "text/plain", GrokAuthError, "Forbidden"),
        (
            404,
            '{"error": {"message": "The model `x` does not exist"}}',
            "application/json",
            GrokNotFoundError,
            "does not exist",
        ),
        (404, "", "text/plain", GrokNotFoundError, "Not Found"),
        (408, "timeout", "text/plain", GrokServerError, "timeout"),
        (409, "conflict", "text/plain", GrokServerError, "conflict"),
        (415, '{"detail": "Unsupported media type"}', "application/json", GrokBadRequestError, "Unsupported media"),
        (422, '{"detail": [{"loc": ["body", "n"], "msg": "bad"}]}', "application/json", GrokBadRequestError, "loc"),
        (429, '{"error": {"message": "Rate limit reached"}}', "application/json", GrokRateLimitError, "Rate limit"),
        (500, '{"message": "internal"}', "application/json", GrokServerError, "internal"),
        (
            502,
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>"
            "<hr><center>nginx</center><script>var x=1;</script></body></html>",
            "text/html",
            GrokServerError,
            "502 Bad Gateway: nginx",
        ),
        (503, "<!DOCTYPE html><p>upstream &amp; down</p>", "", GrokServerError, "upstream & down"),
        (504, "gateway timeout\n\n  upstream", "text/plain", GrokServerError, "gateway timeout upstream"),
        (520, "{broken json", "application/json", GrokServerError, "{broken json"),
    ],
)
def test_error_bodies_map_to_readable_errors(status, body, ctype, cls, said):
    err = protocol.error_from_response(status, body, content_type=ctype, request_id="req-9")
    assert type(err) is cls
    assert err.status == status and err.request_id == "req-9"
    assert said in err.server_message
    assert f"HTTP {status}" in err.message and said in err.message and "req-9" in err.message
    assert "<" not in err.message


def test_error_messages_redact_the_key_and_count_attempts():
    key = "xai-SECRET-KEY-1234567890"
    err = protocol.error_from_response(500, f"upstream saw Authorization: Bearer {key}", secret=key, attempts=4)
    assert key not in err.message and key not in err.server_message
    assert "***" in err.message and "after 4 attempts" in err.message


def test_html_error_is_clipped():
    err = protocol.error_from_response(502, "<html><body>" + "x " * 5000 + "</body></html>", content_type="text/html")
    assert len(err.server_message) <= 300


def test_connection_test_outcomes():
    settings, _ = protocol.settings_from_connection("https://h", "key-123", {"model": "other"})
    ok, msg = protocol.connection_test_outcome(200, json.dumps({"data": [{"id": "a"}, {"id": "b"}]}), None, settings)
    assert ok and "2 models" in msg and "'other' is not among them" in msg
    ok, msg = protocol.connection_test_outcome(401, '{"error": {"message": "bad key key-123"}}', None, settings)
    assert not ok and "rejected the API key" in msg and "key-123" not in msg
    ok, msg = protocol.connection_test_outcome(404, "", None, settings)
    assert ok and "could not be verified without generating" in msg
    ok, msg = protocol.connection_test_outcome(500, "boom", None, settings)
    assert not ok and "HTTP 500" in msg and "boom" in msg


# --- retries ---


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, None])
def test_transient_failures_are_retried(status):
    assert RetryPolicy(max_retries=3).delay(0, status=status, rng=lambda: 0.0, now=NOW) == 0.5


@pytest.mark.parametrize("status", [400, 401, 403, 404, 415, 422, 501])
def test_permanent_failures_are_not_retried(status):
    assert RetryPolicy(max_retries=3).delay(0, status=status, now=NOW, rng=lambda: 0.5) is None


def test_retries_are_bounded():
    policy = RetryPolicy(max_retries=2)
    assert policy.delay(1, status=503, now=NOW, rng=lambda: 0.5) is not None
    assert policy.delay(2, status=503, now=NOW, rng=lambda: 0.5) is None
    assert RetryPolicy(max_retries=0).delay(0, status=503, now=NOW, rng=lambda: 0.5) is None


@pytest.mark.parametrize(
    ("retries_done", "rng", "expected"),
    [(0, 0.0, 0.5), (0, 1.0, 1.0), (1, 0.0, 1.0), (2, 1.0, 4.0), (3, 0.5, 6.0), (10, 1.0, 30.0), (10, 0.0, 15.0)],
)
def test_exponential_backoff_with_jitter(retries_done, rng, expected):
    policy = RetryPolicy(max_retries=20, backoff_base=1.0, backoff_max=30.0)
    assert policy.delay(retries_done, status=503, rng=lambda: rng, now=NOW) == pytest.approx(expected)


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-3"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"Retry-After": email.utils.formatdate(NOW + 12, usegmt=True)}, 12.0),
        ({"Retry-After": email.utils.formatdate(NOW - 50, usegmt=True)}, 0.0),
        ({"Retry-After": "Someday"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_forms(headers, expected):
    assert protocol.retry_after_seconds(headers, now=NOW) == expected


@pytest.mark.parametrize(("status", "everyone"), [(429, True), (503, False), (500, False)])
def test_a_429_pauses_everyone_on_the_budget_other_faults_only_this_request(status, everyone):
    settings = protocol.ConnectionSettings(base_url="https://api.x.ai", api_key="k")
    call = protocol.GenerationCall(settings, RetryPolicy(max_retries=2), {"prompt": "p", "n": 1}, rng=lambda: 0.5)
    step = call.received(status, {"Retry-After": "3"}, b"{}", now=NOW)
    assert isinstance(step, protocol.Retry) and step.delay == 3.0 and step.pause_everyone is everyone


def test_retry_after_is_honoured_and_capped():
    policy = RetryPolicy(max_retries=3, retry_after_max=60)
    assert policy.delay(0, status=429, headers={"Retry-After": "7"}, now=NOW, rng=lambda: 0.5) == 7.0
    assert policy.delay(0, status=429, headers={"Retry-After": "3600"}, now=NOW, rng=lambda: 0.5) == 60.0
    assert policy.delay(0, status=400, headers={"Retry-After": "1"}, now=NOW, rng=lambda: 0.5) is None


# --- images ---


@pytest.mark.parametrize(
    ("data", "mime", "ext"),
    [(JPEG, "image/jpeg", "jpg"), (PNG, "image/png", "png"), (WEBP, "image/webp", "webp")],
)
def test_sniff_image_types(data, mime, ext):
    kind = protocol.sniff_image_type(data)
    assert kind is not None and (kind.mime_type, kind.extension) == (mime, ext)


@pytest.mark.parametrize("data", [b"", b"GIF89a....", b"<html>", b"RIFF\x00\x00\x00\x00WAVE", b"\xff\xd8"])
def test_non_images_are_rejected(data):
    assert protocol.sniff_image_type(data) is None
    with pytest.raises(GrokImageDownloadError, match="not a JPEG, PNG or WebP"):
        protocol.verify_image(data, "Image 0")


@pytest.mark.parametrize(
    "text", [b64(JPEG), "data:image/jpeg;base64," + b64(JPEG), b64(JPEG)[:8] + "\n" + b64(JPEG)[8:]]
)
def test_decode_b64_images(text):
    assert protocol.decode_b64_image(text, "Image 0") == JPEG


@pytest.mark.parametrize("text", ["not base64!!", b64(b"plain text, not an image")])
def test_bad_b64_images_are_rejected(text):
    with pytest.raises(GrokImageDownloadError):
        protocol.decode_b64_image(text, "Image 0")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/x.jpg", "javascript:alert(1)", "//h/x.jpg"])
def test_only_http_urls_are_fetched(url):
    with pytest.raises(GrokImageDownloadError, match="not http"):
        protocol.check_download_url(url, "Image 0")


def test_redact():
    assert protocol.redact("key abcd1234 here", "abcd1234") == "key *** here"
    assert protocol.redact("nothing", None) == "nothing"
    assert protocol.redact("a", "a") == "a"  # too short to be a key; redacting would garble text


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("gw.example", 8443, "https://gw.example:8443"),
        ("http://127.0.0.1", 8080, "http://127.0.0.1:8080"),
        ("http://127.0.0.1:9000", 8080, "http://127.0.0.1:9000"),
        ("https://gw.example/v1", 8443, "https://gw.example:8443/v1"),
        ("https://gw.example", None, "https://gw.example"),
    ],
)
def test_settings_take_the_port_of_uri_form_connections(host, port, expected):
    settings, _ = protocol.settings_from_connection(host, "key", {}, port)
    assert settings.base_url == expected


def test_the_generation_parameters_are_declared_once():
    from dataclasses import fields

    from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator

    assert tuple(protocol.GenerationOptions.__annotations__) == protocol.GENERATION_OPTIONS
    assert tuple(f.name for f in fields(protocol.GenerationParams)) == ("prompt", *protocol.GENERATION_OPTIONS)
    assert set(protocol.GENERATION_OPTIONS) <= set(GrokGenerateImagesOperator.template_fields)
    body = params(aspect_ratio="1:1", resolution="1k", quality="low", user="u").request_bodies()[0]
    assert set(body) == {"model", "prompt", "n", "response_format", "aspect_ratio", "resolution", "quality", "user"}
