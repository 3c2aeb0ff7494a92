"""
The Grok Imagine protocol, with no Airflow and no HTTP library (sans-IO).

Everything both transports (the ``requests`` hook and the ``httpx`` hook) must agree on lives here
exactly once: which parameters are valid, what a request body holds, how a base URL reaches
``/v1/images/generations``, how a response or an error body reads, and when to retry.
The transports only move bytes and sleep.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import html
import json
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, TypedDict
from urllib.parse import urlsplit, urlunsplit

from airflow_provider_grok.exceptions import (
    GrokAuthError,
    GrokBadRequestError,
    GrokContentFilteredError,
    GrokError,
    GrokImageDownloadError,
    GrokNotFoundError,
    GrokRateLimitError,
    GrokResponseError,
    GrokServerError,
    GrokValidationError,
)

# --- Known values (the single source of truth; the docs and the simulator read them from here) ---
# xAI adds values every few months: these lists document and warn. Only a malformed value is refused
# before a call; a well-formed unknown one is sent (xAI refuses a bad value with a free 4xx) with a warning.

DEFAULT_MODEL = "grok-imagine-image"
MAX_IMAGES_PER_REQUEST = 10
# A safety bound on one generate_images() call (split into requests of 10): a typo such as n=1000
# would otherwise spend about $20 before anyone notices.
MAX_IMAGES_PER_CALL = 100
RESPONSE_FORMATS = ("url", "b64_json")
ASPECT_RATIOS = (
    "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "2:1", "1:2",
    "19.5:9", "9:19.5", "20:9", "9:20", "21:9", "5:2", "auto",
)  # fmt: skip
RESOLUTIONS = ("1k", "1.5k", "2k")
SIZES = ("1024x1024", "1536x1024", "1024x1536")
# Gateway 003 takes standard/hd; xAI's grok-imagine-image-2.0 takes low/medium/auto (auto is its default).
QUALITIES = ("standard", "hd", "low", "medium", "auto")
# What a well-formed value looks like, for values not in the lists above.
_WELL_FORMED = {
    "aspect_ratio": (re.compile(r"^(\d+(\.\d+)?:\d+(\.\d+)?|auto)$"), "W:H such as 16:9, or auto"),
    "resolution": (re.compile(r"^\d+(\.\d+)?k$"), "<number>k such as 1k or 2k"),
    "size": (re.compile(r"^\d+x\d+$"), "WIDTHxHEIGHT such as 1024x1024"),
    "quality": (re.compile(r"^[a-z][a-z0-9_-]*$"), "a lowercase word such as low, medium, auto, standard, hd"),
}
_KNOWN = {"aspect_ratio": ASPECT_RATIOS, "resolution": RESOLUTIONS, "size": SIZES, "quality": QUALITIES}
# Fields the provider sets itself; extra_body may not override them.
CORE_FIELDS = (
    "prompt", "model", "n", "response_format", "aspect_ratio", "resolution", "size", "quality", "user",
)  # fmt: skip

DEFAULT_CONNECT_TIMEOUT = 10.0
# A 2k generation on the newest models takes 60-80 s; gateways advise several minutes.
DEFAULT_READ_TIMEOUT = 300.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
# Ten 2k images as base64 are tens of MB; an answer far beyond that is not one.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024

GENERATIONS_PATH = "images/generations"
MODELS_PATH = "models"

USD_TICKS = 10**10  # xAI reports usage.cost_in_usd_ticks; 10^10 ticks are one US dollar.
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-xai-request-id", "x-amzn-requestid", "cf-ray")


# --- Small helpers ---


def redact(text: str, secret: str | None) -> str:
    """Remove ``secret`` (the API key) from text that came from a server or an exception."""
    if secret and len(secret) >= 4 and secret in text:
        return text.replace(secret, "***")
    return text


def _shown(value: Any) -> str:
    """Render a user-given value for an error message, shortened so a huge prompt cannot flood a log."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _invalid(param: str, value: Any, allowed: str) -> GrokValidationError:
    return GrokValidationError(f"Invalid {param}={_shown(value)}: {allowed}.")


def _choice(param: str, value: Any, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise _invalid(param, value, "allowed values are " + ", ".join(allowed))


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts too."""
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def request_id_from_headers(headers: Mapping[str, str] | None, secret: str | None = None) -> str | None:
    """The gateway's request id (redacted: a hostile gateway may echo the key in any header)."""
    for name in REQUEST_ID_HEADERS:
        if value := header(headers, name):
            return redact(value, secret)[:200]
    return None


# --- Connection settings ---

CONNECTION_EXTRAS = ("model", "timeout", "max_retries", "requests_per_second", "extra_headers")


@dataclass(frozen=True)
class ConnectionSettings:
    """
    What a ``grok`` connection says, parsed and validated.

    :param base_url: gateway root, with or without ``/v1``.
    :param api_key: bearer key (never shown in repr).
    :param model: model used when a call does not name one.
    :param timeout: read timeout of one generation request, seconds.
    :param connect_timeout: TCP/TLS connect timeout, seconds.
    :param max_retries: retries after a transient failure (0 disables).
    :param requests_per_second: client-side cap on request starts, None for no cap.
    :param extra_headers: headers added to every API request (never to image downloads).
    """

    base_url: str
    api_key: str = field(repr=False)
    model: str = DEFAULT_MODEL
    timeout: float = DEFAULT_READ_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    requests_per_second: float | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return endpoint_url(self.base_url, path)

    def api_headers(self) -> dict[str, str]:
        """Headers of an API request. Image downloads never get these."""
        return {
            **self.extra_headers,
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }


def settings_from_connection(
    host: str | None, password: str | None, extra: Mapping[str, Any] | None, port: int | None = None
) -> tuple[ConnectionSettings, list[str]]:
    """
    Build :class:`ConnectionSettings` from a connection's fields.

    Returns the settings and the extra keys it did not recognise (the hook warns about them: a typo
    such as ``max_retry`` must not pass silently).
    """
    if not host or not host.strip():
        raise GrokValidationError(
            "The grok connection has no host: set it to the gateway base URL, e.g. https://api.x.ai"
        )
    base_url = host.strip()
    if "://" not in base_url:
        base_url = "https://" + base_url
    endpoint_url(base_url, GENERATIONS_PATH)  # validates scheme and host
    parts = urlsplit(base_url)
    if port and parts.port is None:  # the URI form of a connection carries the port separately
        base_url = urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}"))
    if not password:
        raise GrokValidationError("The grok connection has no API key: store it in the connection's password field.")
    extra = _plain_extras(extra or {})
    unknown = sorted(k for k in extra if k not in CONNECTION_EXTRAS)

    model = _extra_str(extra, "model") or DEFAULT_MODEL
    timeout = _extra_number(extra, "timeout", DEFAULT_READ_TIMEOUT, minimum=1)
    max_retries = int(_extra_number(extra, "max_retries", DEFAULT_MAX_RETRIES, minimum=0, integer=True))
    rps_value = _extra_number(extra, "requests_per_second", 0, minimum=0)
    headers = _extra_headers(extra.get("extra_headers"))
    settings = ConnectionSettings(
        base_url=base_url,
        api_key=password,
        model=model,
        timeout=timeout,
        max_retries=max_retries,
        requests_per_second=rps_value or None,
        extra_headers=headers,
    )
    return settings, unknown


_LEGACY_PREFIX = "extra__grok__"


def _plain_extras(extra: Mapping[str, Any]) -> dict[str, Any]:
    """Extras by plain name. Older UIs saved ``extra__grok__<name>``; a set plain key wins over those."""
    plain = {k: v for k, v in extra.items() if not k.startswith(_LEGACY_PREFIX)}
    for key, value in extra.items():
        name = key.removeprefix(_LEGACY_PREFIX)
        if key != name and plain.get(name) in (None, ""):
            plain[name] = value
    return plain


def _extra_str(extra: Mapping[str, Any], key: str) -> str | None:
    value = extra.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise _invalid(f"connection extra {key!r}", value, "expected a string")
    return value.strip()


def _extra_number(
    extra: Mapping[str, Any], key: str, default: float, *, minimum: float, integer: bool = False
) -> float:
    value = extra.get(key)
    if value in (None, ""):
        return default
    kind = "an integer" if integer else "a number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _invalid(f"connection extra {key!r}", value, f"expected {kind} >= {minimum:g}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < minimum or (integer and number % 1):
        raise _invalid(f"connection extra {key!r}", value, f"expected {kind} >= {minimum:g}")
    return number


def _extra_headers(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise _invalid("connection extra 'extra_headers'", value, f"not valid JSON ({err.msg})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _invalid("connection extra 'extra_headers'", value, 'expected a JSON object of strings, {"X-Name": "v"}')
    if any(any(ord(c) < 32 or ord(c) == 127 for c in k + v) for k, v in value.items()):
        raise _invalid(
            "connection extra 'extra_headers'",
            {k: "..." for k in value},
            "header names and values may not contain control characters (CR, LF)",
        )
    if any(k.lower() == "authorization" for k in value):
        raise GrokValidationError(
            "Invalid connection extra 'extra_headers': it sets Authorization, which would replace the "
            "API key. Store the key in the connection's password field instead."
        )
    return value


# --- URLs ---


def endpoint_url(base_url: str, path: str) -> str:
    """
    Join a gateway base URL and an API path under ``/v1``.

    ``https://h``, ``https://h/``, ``https://h/v1`` and ``https://h/v1/`` all give ``https://h/v1/<path>``;
    a base that already ends in ``/v1/<path>`` is accepted as is. A path prefix before ``/v1`` is kept.
    """
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _invalid("base URL (connection host)", base_url, "expected http(s)://host[/prefix][/v1]")
    prefix = parts.path.rstrip("/")
    if prefix.endswith(f"/v1/{path}"):
        prefix = prefix[: -len(f"/{path}")]
    prefix = prefix.removesuffix("/v1")
    return urlunsplit((parts.scheme, parts.netloc, f"{prefix}/v1/{path}", parts.query, ""))


# --- Requests ---


class GenerationOptions(TypedDict, total=False):
    """The optional parameters of a generation call, as hooks take them (see :class:`GenerationParams`)."""

    model: str | None
    n: int
    response_format: str
    aspect_ratio: str | None
    resolution: str | None
    size: str | None
    quality: str | None
    user: str | None
    extra_body: Mapping[str, Any] | None


@dataclass(frozen=True)
class GenerationParams:
    """
    One validated image-generation call. ``n`` may exceed 10: :meth:`request_bodies` splits it.

    Only the fields the user set are sent; gateways differ in which optional fields they accept.
    """

    prompt: str
    model: str
    n: int = 1
    response_format: str = "url"
    aspect_ratio: str | None = None
    resolution: str | None = None
    size: str | None = None
    quality: str | None = None
    user: str | None = None
    extra_body: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        validate_generation_params(self)

    def request_bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies to POST, one per chunk of at most 10 images, in image order."""
        base: dict[str, Any] = {"model": self.model, "prompt": self.prompt}
        for name in ("aspect_ratio", "resolution", "size", "quality", "user"):
            value = getattr(self, name)
            if value is not None:
                base[name] = value
        base.update(self.extra_body or {})
        base["response_format"] = self.response_format
        return [{**base, "n": chunk} for chunk in split_n(self.n)]

    def with_n(self, n: int) -> GenerationParams:
        return replace(self, n=n)


def split_n(n: int) -> list[int]:
    """25 -> [10, 10, 5]: the per-request counts for ``n`` images."""
    full, rest = divmod(n, MAX_IMAGES_PER_REQUEST)
    return [MAX_IMAGES_PER_REQUEST] * full + ([rest] if rest else [])


def validate_generation_params(p: GenerationParams) -> None:
    """Raise :class:`GrokValidationError` naming the parameter, the value and what is allowed."""
    if not isinstance(p.prompt, str) or not p.prompt.strip():
        raise _invalid("prompt", p.prompt, "expected a non-empty string")
    if not isinstance(p.model, str) or not p.model.strip():
        raise _invalid("model", p.model, "expected a model name such as " + DEFAULT_MODEL)
    if isinstance(p.n, bool) or not isinstance(p.n, int) or not 1 <= p.n <= MAX_IMAGES_PER_CALL:
        raise _invalid(
            "n",
            p.n,
            f"expected an integer from 1 to {MAX_IMAGES_PER_CALL} (more than "
            f"{MAX_IMAGES_PER_REQUEST} is sent as several requests)",
        )
    _choice("response_format", p.response_format, RESPONSE_FORMATS)
    for name, (pattern, form) in _WELL_FORMED.items():
        value = getattr(p, name)
        if value is not None and (not isinstance(value, str) or not pattern.match(value)):
            raise _invalid(name, value, f"expected {form} (known: {', '.join(_KNOWN[name])})")
    if p.size is not None and (p.aspect_ratio is not None or p.resolution is not None):
        raise _invalid(
            "size",
            p.size,
            "size (OpenAI-style gateways) cannot be combined with aspect_ratio/resolution "
            "(xAI-style); set one or the other",
        )
    if p.user is not None and not isinstance(p.user, str):
        raise _invalid("user", p.user, "expected a string")
    if p.extra_body is not None:
        if not isinstance(p.extra_body, Mapping) or not all(isinstance(k, str) for k in p.extra_body):
            raise _invalid("extra_body", p.extra_body, "expected a dict with string keys")
        clashes = sorted(set(p.extra_body) & set(CORE_FIELDS))
        if clashes:
            raise _invalid(
                "extra_body", p.extra_body, f"{', '.join(clashes)} must be passed as parameters, not in extra_body"
            )
        try:
            json.dumps(p.extra_body, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise _invalid("extra_body", p.extra_body, f"expected JSON values only ({err})") from None


def unknown_values(p: GenerationParams) -> list[str]:
    """Well-formed values this provider does not know yet: sent as given, worth a warning."""
    return [
        f"{name}={getattr(p, name)!r} is not a value this provider knows ({', '.join(_KNOWN[name])}); sending it "
        "as given (the gateway refuses a value it does not take, without charge)"
        for name in _KNOWN
        if getattr(p, name) is not None and getattr(p, name) not in _KNOWN[name]
    ]


# --- Responses ---


@dataclass(frozen=True)
class GeneratedImage:
    """
    One image as the gateway returned it: a temporary ``url`` or inline ``b64_json`` (prefix stripped).

    :param index: position within the call, 0-based, continuous across split requests.
    """

    index: int
    url: str | None = None
    b64_json: str | None = field(default=None, repr=False)
    revised_prompt: str | None = None
    mime_type: str | None = None


@dataclass(frozen=True)
class ImageGenerationResult:
    """
    The outcome of one ``generate_images`` call.

    ``requested`` is the ``n`` asked for; moderation may return fewer ``images`` (still billed).
    """

    created: int | None
    model: str | None
    images: list[GeneratedImage]
    requested: int
    usage: dict[str, Any] | None = None
    request_ids: list[str] = field(default_factory=list)
    malformed: int = 0
    extra_returned: int = 0

    @property
    def filtered_count(self) -> int:
        """Images asked for but removed by content moderation (not returned, or returned as placeholders)."""
        return max(self.requested - len(self.images) - self.malformed, 0)

    @property
    def cost_usd(self) -> float | None:
        ticks = (self.usage or {}).get("cost_in_usd_ticks")
        return ticks / USD_TICKS if isinstance(ticks, int | float) else None


_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,]*)?,", re.IGNORECASE)


def parse_generation_response(
    payload: Any, *, requested: int, request_id: str | None = None, first_index: int = 0, secret: str | None = None
) -> ImageGenerationResult:
    """
    Read one 200 response body (already JSON-decoded).

    Items xAI marks ``"respect_moderation": false`` are placeholders for images moderation removed: they
    count as filtered, never as images. Items with neither ``url`` nor ``b64_json`` count as ``malformed``.
    Images beyond ``requested`` are dropped (``extra_returned``): their keys would collide with the next
    request's. Anything quoted from the body is redacted of ``secret``.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise GrokResponseError(
            redact(
                "The gateway answered 200 but not with an image-generation response (expected a JSON object "
                f"with a 'data' list, got {_shown(payload)[:200]}).",
                secret,
            ),
            request_id=request_id,
        )
    images: list[GeneratedImage] = []
    malformed = extra = 0
    for item in payload["data"]:
        if isinstance(item, dict) and item.get("respect_moderation") is False:
            continue  # a placeholder: filtered by moderation
        url, b64, mime = (
            (item.get("url") or None, item.get("b64_json") or None, item.get("mime_type") or None)
            if isinstance(item, dict)
            else (None, None, None)
        )
        if isinstance(b64, str) and (match := _DATA_URI.match(b64)):
            b64, mime = b64[match.end() :], mime or match.group("mime")
        if not isinstance(url, str | None) or not isinstance(b64, str | None) or (not url and not b64):
            malformed += 1
            continue
        if len(images) == requested:
            extra += 1
            continue
        images.append(
            GeneratedImage(
                index=first_index + len(images),
                url=url,
                b64_json=b64,
                revised_prompt=item.get("revised_prompt") or None,
                mime_type=mime,
            )
        )
    created = payload.get("created")
    usage = payload.get("usage")
    return ImageGenerationResult(
        created=created if isinstance(created, int) else None,
        model=payload.get("model") if isinstance(payload.get("model"), str) else None,
        images=images,
        requested=requested,
        usage=usage if isinstance(usage, dict) else None,
        request_ids=[request_id] if request_id else [],
        malformed=malformed,
        extra_returned=extra,
    )


def merge_results(parts: Sequence[ImageGenerationResult], *, model: str | None = None) -> ImageGenerationResult:
    """Join the results of split requests, in order, renumbering images 0..k-1."""
    images: list[GeneratedImage] = []
    for part in parts:
        offset = len(images)
        images.extend([replace(image, index=offset + i) for i, image in enumerate(part.images)])
    usages = [p.usage for p in parts if p.usage]
    created = [p.created for p in parts if p.created is not None]
    return ImageGenerationResult(
        created=max(created) if created else None,
        model=next((p.model for p in parts if p.model), model),
        images=images,
        requested=sum(p.requested for p in parts),
        usage=sum_usage(usages) if usages else None,
        request_ids=[rid for p in parts for rid in p.request_ids],
        malformed=sum(p.malformed for p in parts),
        extra_returned=sum(p.extra_returned for p in parts),
    )


def sum_usage(usages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add usage dicts field by field (numbers summed, nested dicts merged, other values kept first-seen)."""
    total: dict[str, Any] = {}
    for usage in usages:
        for key, value in usage.items():
            current = total.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float | dict):
                total.setdefault(key, value)
            elif isinstance(value, dict):
                total[key] = sum_usage([current, value]) if isinstance(current, dict) else dict(value)
            elif isinstance(current, int | float) and not isinstance(current, bool):
                total[key] = current + value
            else:
                total.setdefault(key, value)
    return total


# --- Errors ---

_CONTENT_POLICY = re.compile(
    r"content[ _-]?polic|moderat|safety|violat|nsfw|inappropriate|not allowed to generate", re.IGNORECASE
)
_BAD_KEY = re.compile(r"api[ _-]?key|unauthori[sz]ed|authenticat", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"\s+")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SCRIPTS = re.compile(r"<(script|style|head)[^>]*>.*?</\1>", re.IGNORECASE | re.DOTALL)

_HINTS = {
    GrokAuthError: "Check the API key stored as the grok connection's password, and that it may use this model.",
    GrokNotFoundError: (
        "Check the model name and the connection's base URL: it should be the gateway root, with or "
        "without a trailing /v1 (the provider adds /v1/images/generations itself)."
    ),
    GrokContentFilteredError: "The prompt was refused by content moderation; rephrase it.",
    GrokRateLimitError: "Lower max_concurrency, or set requests_per_second on the connection.",
    GrokServerError: "The gateway is failing; try again later or raise max_retries on the connection.",
}


def server_message(status: int, body: str, content_type: str | None = None) -> tuple[str, str | None]:
    """The server's own words from an error body (OpenAI style, flat xAI style, plain text or HTML), and its code."""
    text = body.strip()
    if text[:1] in "{[":
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            return _json_error_message(payload)
    if "html" in (content_type or "").lower() or text[:1] == "<":
        return _html_text(text) or _reason(status), None
    return (_clip(_SPACES.sub(" ", text), 500) if text else _reason(status)), None


def _json_error_message(payload: dict[str, Any]) -> tuple[str, str | None]:
    error = payload.get("error")
    if isinstance(error, dict):  # OpenAI style
        message = error.get("message") or json.dumps(error)
        code = error.get("code") or error.get("type")
    elif isinstance(error, str):  # xAI flat style: {"code": "...", "error": "..."}
        message, code = error, payload.get("code")
    else:
        detail = payload.get("message") or payload.get("detail") or json.dumps(payload)
        message, code = detail if isinstance(detail, str) else json.dumps(detail), payload.get("code")
    return _clip(str(message), 1000), (str(code) if code is not None else None)


def _html_text(page: str) -> str:
    title = _TITLE.search(page)
    body = _SPACES.sub(" ", html.unescape(_TAGS.sub(" ", _SCRIPTS.sub(" ", page)))).strip()
    if title:
        heading = _SPACES.sub(" ", html.unescape(title.group(1))).strip()
        body = body.removeprefix(heading).strip()
        return _clip(f"{heading}: {body}" if body else heading, 300)
    return _clip(body, 300)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "no message"


def error_class(status: int, message: str, code: str | None = None) -> type[GrokError]:
    """Which :class:`GrokError` a status (and the server's words) means. One place for the table in API.md."""
    words = f"{message} {code or ''}"
    if status in (401, 403) or (status == 400 and _BAD_KEY.search(words) and not _CONTENT_POLICY.search(words)):
        return GrokAuthError
    if status == 404:
        return GrokNotFoundError
    if status == 429:
        return GrokRateLimitError
    if status in (400, 422) and _CONTENT_POLICY.search(words):
        return GrokContentFilteredError
    if 400 <= status < 500 and status not in (408, 409):
        return GrokBadRequestError
    return GrokServerError


def error_from_response(
    status: int,
    body: str,
    *,
    content_type: str | None = None,
    request_id: str | None = None,
    secret: str | None = None,
    attempts: int = 1,
) -> GrokError:
    """Turn an error response into the matching :class:`GrokError`, with the server's redacted message."""
    said, code = server_message(status, body, content_type)
    said = redact(said, secret)
    cls = error_class(status, said, code)
    parts = [f"Grok API answered HTTP {status}: {said}"]
    if attempts > 1:
        parts.append(f"(after {attempts} attempts)")
    if hint := _HINTS.get(cls):
        parts.append(hint)
    if request_id:
        parts.append(f"Request id: {request_id}.")
    return cls(" ".join(parts), status=status, server_message=said, request_id=request_id)


def connection_test_outcome(
    status: int, body: str, content_type: str | None, settings: ConnectionSettings
) -> tuple[bool, str]:
    """What ``GET /v1/models`` says about a connection, as Airflow's ``test_connection`` result."""
    base = settings.base_url
    if 200 <= status < 300:
        try:
            listed = [m.get("id") for m in json.loads(body).get("data", []) if isinstance(m, dict)]
        except (ValueError, AttributeError):
            listed = []
        message = f"Connected to {base}: the API key was accepted"
        if listed:
            message += f"; {len(listed)} models available"
            if settings.model not in listed:
                message += f". Note: the default model {settings.model!r} is not among them"
        return True, message + "."
    said, code = server_message(status, body, content_type)
    said = redact(said, settings.api_key)
    if error_class(status, said, code) is GrokAuthError:
        return False, f"The gateway at {base} rejected the API key (HTTP {status}): {said}"
    if status == 404:
        return True, (
            f"Reached the gateway at {base}, but it has no /v1/models endpoint, so the API key could not be "
            "verified without generating an image (which would cost money)."
        )
    return False, f"The gateway at {base} answered HTTP {status} to GET /v1/models: {said}"


# Errors that hit every request of a batch the same way: stop the batch instead of paying for nothing.
BATCH_FATAL_ERRORS: tuple[type[GrokError], ...] = (GrokAuthError, GrokNotFoundError)


# --- Retries ---

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def retry_after_seconds(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """The wait a 429/503 asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    if (ms := header(headers, "retry-after-ms")) is not None:
        try:
            seconds = float(ms) / 1000
        except ValueError:
            pass
        else:
            if math.isfinite(seconds):  # NaN or inf would reach time.sleep
                return max(seconds, 0.0)
    value = header(headers, "retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """
    When to retry and how long to wait. A retry may be billed again, so it is bounded and logged.

    :param max_retries: retries after the first attempt.
    :param backoff_base: first backoff, seconds; doubles per retry, with jitter.
    :param backoff_max: ceiling of one backoff.
    :param retry_after_max: ceiling applied to a server's ``Retry-After``.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 60.0

    def delay(
        self,
        retries_done: int,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        rng: Callable[[], float] = random.random,
        now: float | None = None,
    ) -> float | None:
        """
        Seconds to wait before the next attempt, or None when the failure is final.

        :param retries_done: retries already made for this request (0 after the first failure).
        :param status: the HTTP status, or None for a transport failure (no response).
        """
        if retries_done >= self.max_retries:
            return None
        if status is not None and status not in RETRYABLE_STATUSES:
            return None
        hinted = retry_after_seconds(headers, now=now)
        if hinted is not None:
            return min(hinted, self.retry_after_max)
        ceiling = min(self.backoff_max, self.backoff_base * 2**retries_done)
        return ceiling * (0.5 + 0.5 * rng())  # "equal jitter": never less than half the backoff


class RateLimiter:
    """
    A client-side cap on request starts per second, shared by every thread or task using one hook.

    ``reserve()`` books the next free slot and returns how long the caller must sleep before sending;
    the caller sleeps with its own clock (``time.sleep`` or ``asyncio.sleep``).
    """

    def __init__(self, requests_per_second: float | None) -> None:
        self.interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_start = 0.0
        self._lock = threading.Lock()  # held for microseconds; safe in an event loop

    def reserve(self, now: float | None = None) -> float:
        if not self.interval:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            start = max(now, self._next_start)
            self._next_start = start + self.interval
        return start - now


# --- Images ---


@dataclass(frozen=True)
class ImageType:
    mime_type: str
    extension: str


_SIGNATURES = (
    (b"\xff\xd8\xff", ImageType("image/jpeg", "jpg")),
    (b"\x89PNG\r\n\x1a\n", ImageType("image/png", "png")),
)
_WEBP = ImageType("image/webp", "webp")


def sniff_image_type(data: bytes) -> ImageType | None:
    """JPEG, PNG or WebP from the magic bytes; None for anything else."""
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            return kind
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _WEBP
    return None


def verify_image(data: bytes, source: str) -> ImageType:
    """The image type of ``data``, or :class:`GrokImageDownloadError` if it is not JPEG, PNG or WebP."""
    kind = sniff_image_type(data)
    if kind is None:
        raise GrokImageDownloadError(
            f"{source} is not a JPEG, PNG or WebP image ({len(data)} bytes starting with {data[:16]!r})."
        )
    return kind


def decode_b64_image(b64: str, source: str, limit: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """Decode an inline image (a ``data:`` prefix is tolerated), capped at ``limit`` bytes, verified an image."""
    if match := _DATA_URI.match(b64):
        b64 = b64[match.end() :]
    if len(b64) * 3 // 4 > limit:  # known before decoding: never allocate an oversized image
        raise too_large_error(source, limit, len(b64) * 3 // 4)
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        try:  # line-wrapped base64 is valid too; removing whitespace only when needed saves a scan of MBs
            data = base64.b64decode("".join(b64.split()), validate=True)
        except (binascii.Error, ValueError) as err:
            raise GrokImageDownloadError(f"{source} has b64_json that is not valid base64 ({err}).") from None
    verify_image(data, source)
    return data


def check_download_url(url: str, source: str) -> None:
    """Only http(s) URLs are fetched; anything else (file:, ftp:, data:) is refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise GrokImageDownloadError(f"{source} has URL {_shown(url)}, which is not http(s); refusing to fetch it.")


def too_large_error(source: str, limit: int, size: int | None = None) -> GrokImageDownloadError:
    got = f" ({size} bytes)" if size is not None else ""
    return GrokImageDownloadError(
        f"{source} is larger than the {limit}-byte limit{got}; raise max_image_bytes on the hook if expected."
    )
