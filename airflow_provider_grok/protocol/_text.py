"""Small text helpers every part of the protocol shares: redaction, showing a value in a message, headers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_provider_grok.exceptions import GrokValidationError

REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-xai-request-id", "x-amzn-requestid", "cf-ray")
# A data URI's prefix, as gateways put before b64_json (reported) and users before inline sources.
DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[^,]*)?,", re.IGNORECASE)


def redact(text: str, secret: str | None) -> str:
    """Remove ``secret`` (the API key) from text that came from a server or an exception."""
    if secret and len(secret) >= 4 and secret in text:
        return text.replace(secret, "***")
    return text


def shown(value: Any) -> str:
    """Render a user-given value for an error message, shortened so a huge prompt cannot flood a log."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def invalid(param: str, value: Any, allowed: str) -> GrokValidationError:
    return GrokValidationError(f"Invalid {param}={shown(value)}: {allowed}.")


def choice(param: str, value: Any, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise invalid(param, value, "allowed values are " + ", ".join(allowed))


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
