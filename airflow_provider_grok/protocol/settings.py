"""A ``grok`` connection, parsed and validated: base URL (and the ``/v1`` rule), key, extras."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow_provider_grok.exceptions import GrokValidationError
from airflow_provider_grok.protocol._text import invalid
from airflow_provider_grok.protocol.params import DEFAULT_MODEL

DEFAULT_CONNECT_TIMEOUT = 10.0
# A 2k generation on the newest models takes 60-80 s; gateways advise several minutes.
DEFAULT_READ_TIMEOUT = 300.0
DEFAULT_MAX_RETRIES = 3

GENERATIONS_PATH = "images/generations"
MODELS_PATH = "models"


CONNECTION_EXTRAS = ("model", "timeout", "max_retries", "requests_per_second", "extra_headers", "redis_conn_id")


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
    :param redis_conn_id: an Airflow ``redis`` connection: when set, ``requests_per_second`` (and a 429's
        pause) holds for every process that uses this gateway and key, not for each process alone.
    """

    base_url: str
    api_key: str = field(repr=False)
    model: str = DEFAULT_MODEL
    timeout: float = DEFAULT_READ_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    requests_per_second: float | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    redis_conn_id: str | None = None

    @property
    def api_key_hash(self) -> str:
        """Names the key where it must be told apart (a shared budget) without ever revealing it."""
        return hashlib.sha256(self.api_key.encode()).hexdigest()[:16]

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
        redis_conn_id=_extra_str(extra, "redis_conn_id"),
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
        raise invalid(f"connection extra {key!r}", value, "expected a string")
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
        raise invalid(f"connection extra {key!r}", value, f"expected {kind} >= {minimum:g}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < minimum or (integer and number % 1):
        raise invalid(f"connection extra {key!r}", value, f"expected {kind} >= {minimum:g}")
    return number


def _extra_headers(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise invalid("connection extra 'extra_headers'", value, f"not valid JSON ({err.msg})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise invalid("connection extra 'extra_headers'", value, 'expected a JSON object of strings, {"X-Name": "v"}')
    if any(any(ord(c) < 32 or ord(c) == 127 for c in k + v) for k, v in value.items()):
        raise invalid(
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
        raise invalid("base URL (connection host)", base_url, "expected http(s)://host[/prefix][/v1]")
    prefix = parts.path.rstrip("/")
    if prefix.endswith(f"/v1/{path}"):
        prefix = prefix[: -len(f"/{path}")]
    prefix = prefix.removesuffix("/v1")
    return urlunsplit((parts.scheme, parts.netloc, f"{prefix}/v1/{path}", parts.query, ""))
