"""Reading an error answer (OpenAI style, flat xAI style, plain text or an HTML page) into the right
:class:`~airflow_provider_grok.exceptions.GrokError`, with the server's own words, redacted, and a hint.
"""

from __future__ import annotations

import html
import json
import re
from http import HTTPStatus
from typing import Any

from airflow_provider_grok.exceptions import (
    GrokAuthError,
    GrokBadRequestError,
    GrokContentFilteredError,
    GrokError,
    GrokNotFoundError,
    GrokRateLimitError,
    GrokServerError,
)
from airflow_provider_grok.protocol._text import redact
from airflow_provider_grok.protocol.settings import ConnectionSettings

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
