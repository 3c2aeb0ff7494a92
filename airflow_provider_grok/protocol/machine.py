"""
One request through its retries, as a state machine that never touches a socket, a clock or randomness.

Every transport (``GrokHook`` over requests, ``GrokAsyncHook`` over httpx, image downloads) runs the same
short loop and only moves bytes and sleeps::

    call = GenerationCall(settings, policy, body, rng=random.random)
    while True:
        send = call.request()                 # method, URL, headers, body, time limit, size cap
        ...                                   # move bytes within send.timeout and send.max_bytes
        step = call.received(status, headers, body, now=time.time())   # or call.failed(fault, detail, ...)
        if isinstance(step, Done):
            return step.value
        log(step.message); sleep(step.delay)  # a Retry; a final failure raised its GrokError

Which faults are retried, how each reads, redaction, deadlines and size caps are decided here, once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, TypeVar

from airflow_provider_grok.exceptions import (
    GrokError,
    GrokImageDownloadError,
    GrokNotFoundError,
    GrokResponseError,
    GrokTransportError,
)
from airflow_provider_grok.protocol._text import header, redact, request_id_from_headers
from airflow_provider_grok.protocol.edits import EDITS_PATH
from airflow_provider_grok.protocol.errors import error_from_response
from airflow_provider_grok.protocol.images import (
    ImageType,
    check_download_url,
    decode_b64_image,
    too_large_error,
    verify_image,
)
from airflow_provider_grok.protocol.responses import GeneratedImage, ImageGenerationResult, parse_generation_response
from airflow_provider_grok.protocol.retry import RetryPolicy
from airflow_provider_grok.protocol.settings import GENERATIONS_PATH, ConnectionSettings

T = TypeVar("T")
# What a transport saw instead of an answer: ``no_answer`` (refused, dropped, timed out, cut short),
# ``deadline`` (the whole attempt outlived the connection's timeout), ``too_large`` (past the size cap),
# ``undecodable`` (a corrupt Content-Encoding), ``refused`` (a redirect loop or to a non-http(s) URL).
Fault = Literal["no_answer", "deadline", "too_large", "undecodable", "refused"]
# Image hosts answer these for an expired or revoked temporary URL: retrying cannot help.
EXPIRED_URL_STATUSES = frozenset({401, 403, 404, 410})
# Ten 2k images as base64 are tens of MB; an answer far beyond that is not one.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Send:
    """What to send: the transport sends it within ``timeout`` (the whole attempt) and ``max_bytes``."""

    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)
    json: dict[str, Any] | None
    timeout: float
    connect_timeout: float
    max_bytes: int
    follow_redirects: bool


@dataclass(frozen=True)
class Retry:
    """
    Sleep ``delay`` seconds, then ask :meth:`request` again. ``message`` is the log line. ``pause_everyone``:
    the wait is about the API key, not this request (a 429), so every sender on the same rate budget waits.
    """

    delay: float
    message: str
    pause_everyone: bool = False


@dataclass(frozen=True)
class Done(Generic[T]):
    value: T


class _Attempts:
    """What every call shares: counting attempts and deciding, by the policy, whether to go on."""

    what: str

    def __init__(self, policy: RetryPolicy, rng: Callable[[], float], secret: str | None) -> None:
        self.policy = policy
        self.rng = rng
        self.secret = secret
        self.retries = 0
        self.unanswered = 0  # attempts retried after no answer arrived: each may have been billed

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def _retry(self, delay: float, failure: str, *, pause_everyone: bool = False) -> Retry:
        self.retries += 1
        return Retry(
            delay,
            f"{self.what} failed ({failure}); retry {self.retries} of {self.policy.max_retries} in {delay:.1f} s. "
            "A retried generation may be billed again.",
            pause_everyone,
        )

    def _delay(self, *, status: int | None, headers: Mapping[str, str] | None, now: float) -> float | None:
        return self.policy.delay(self.retries, status=status, headers=headers, rng=self.rng, now=now)


class ApiCall(_Attempts):
    """
    One API request (``POST /v1/images/generations``, ``GET /v1/models``): redirects are not followed (they
    would carry ``extra_headers`` to another origin), a 2xx is :class:`Done` with its headers and body.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        policy: RetryPolicy,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        rng: Callable[[], float],
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        super().__init__(policy, rng, settings.api_key)
        self.settings = settings
        self.method = method
        self.url = settings.url(path)
        self.body = body
        self.max_response_bytes = max_response_bytes
        self.what = f"Grok {method} {self.url}"

    def request(self) -> Send:
        return Send(
            self.method,
            self.url,
            self.settings.api_headers(),
            self.body,
            self.settings.timeout,
            self.settings.connect_timeout,
            self.max_response_bytes,
            follow_redirects=False,
        )

    def received(self, status: int, headers: Mapping[str, str], body: bytes, *, now: float) -> Retry | Done[Any]:
        try:
            if 200 <= status < 300:
                return Done(self.answer(headers, body))
            return self._after_error(status, headers, body, now=now)
        except GrokError as err:
            err.unanswered_attempts = self.unanswered
            raise

    def _after_error(self, status: int, headers: Mapping[str, str], body: bytes, *, now: float) -> Retry:
        if 300 <= status < 400:
            location = redact(header(headers, "location") or "another address", self.secret)
            raise GrokNotFoundError(
                f"{self.what} was redirected (HTTP {status}) to {location[:200]}. Redirects are not followed, so "
                "the API key and extra headers never go to another address: store the final URL as the "
                "connection's base URL.",
                status=status,
            )
        delay = self._delay(status=status, headers=headers, now=now)
        if delay is None:
            raise self.final_error(status, headers, body)
        return self._retry(delay, f"HTTP {status}", pause_everyone=status == 429)

    def final_error(self, status: int, headers: Mapping[str, str], body: bytes) -> GrokError:
        return error_from_response(
            status,
            body.decode("utf-8", "replace"),
            content_type=header(headers, "content-type"),
            request_id=request_id_from_headers(headers, self.secret),
            secret=self.secret,
            attempts=self.attempts,
        )

    def answer(self, headers: Mapping[str, str], body: bytes) -> Any:
        return headers, body

    def failed(self, fault: Fault, detail: str, *, now: float) -> Retry:
        """No answer came: retried per the policy while that can help, else the final :class:`GrokError`."""
        try:
            step = self._after_fault(fault, redact(detail, self.secret), now=now)
        except GrokError as err:
            err.unanswered_attempts = self.unanswered
            raise
        if fault in ("no_answer", "deadline"):
            self.unanswered += 1
        return step

    def _after_fault(self, fault: Fault, detail: str, *, now: float) -> Retry:
        if fault == "too_large":
            raise GrokResponseError(
                f"{self.what}: the answer is larger than the {self.max_response_bytes}-byte limit (ten 2k images "
                "are tens of MB); refusing to read it."
            )
        unanswered = fault in ("no_answer", "deadline")
        if unanswered and not self.policy.retry_unanswered:
            raise GrokTransportError(
                f"{self.what} got no HTTP answer: {detail}. It is not retried here because the gateway may have "
                "billed it and the task has a max_cost_usd: the try ends, its cost counted as unknown, and an "
                "Airflow retry sends it again within the cap."
            )
        delay = None if fault in ("undecodable", "refused") else self._delay(status=None, headers=None, now=now)
        if delay is None:
            raise GrokTransportError(
                f"{self.what} got no HTTP answer after {self.attempts} attempts: {detail}. Check the "
                "connection's base URL and the network; raise the 'timeout' extra for slow gateways (it bounds "
                "a whole attempt)."
            )
        return self._retry(delay, detail)


class GenerationCall(ApiCall):
    """
    ``POST /v1/images/generations`` (or ``/v1/images/edits``: same answer) for one body of at most 10 images:
    :class:`Done` with its result.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        policy: RetryPolicy,
        body: dict[str, Any],
        *,
        rng: Callable[[], float],
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        path: str = GENERATIONS_PATH,
    ) -> None:
        super().__init__(settings, policy, "POST", path, body, rng=rng, max_response_bytes=max_response_bytes)
        self.path = path

    def final_error(self, status: int, headers: Mapping[str, str], body: bytes) -> GrokError:
        error = super().final_error(status, headers, body)
        if self.path == EDITS_PATH and status in (404, 415, 422):
            # OpenAI-style gateways take multipart edits, or none: xAI's JSON form may be unknown to them.
            error = type(error)(
                f"{error.message} The gateway may not support xAI's JSON image edits (POST /v1/images/edits "
                "with image URLs or data URIs); use xAI directly or a gateway that forwards edits.",
                status=error.status,
                server_message=error.server_message,
                request_id=error.request_id,
            )
        return error

    def answer(self, headers: Mapping[str, str], body: bytes) -> ImageGenerationResult:
        """Read a 2xx answer (a body that is not JSON becomes a readable, redacted GrokResponseError)."""
        try:
            payload = json.loads(body)
        except ValueError:
            payload = body[:200].decode("utf-8", "replace")
        assert self.body is not None
        result = parse_generation_response(
            payload,
            requested=self.body["n"],
            request_id=request_id_from_headers(headers, self.secret),
            secret=self.secret,
        )
        return replace(result, unanswered_attempts=self.unanswered) if self.unanswered else result


class ImageBytes(bytes):
    """An image's bytes (verified JPEG, PNG or WebP) that also say what they are: :attr:`image_type`."""

    image_type: ImageType

    def __new__(cls, data: bytes, image_type: ImageType) -> ImageBytes:
        image = super().__new__(cls, data)
        image.image_type = image_type
        return image


def inline_image(image: GeneratedImage, max_bytes: int) -> ImageBytes | None:
    """
    The image if it came inline (``b64_json`` or a ``data:`` URL), decoded, capped and verified; None if it
    must be fetched from its URL (checked to be http(s): anything else is refused, never fetched).
    """
    source = f"Image {image.index}"
    encoded = image.b64_json or (image.url if (image.url or "").startswith("data:") else None)
    if encoded:
        data = decode_b64_image(encoded, source, max_bytes)
        return ImageBytes(data, verify_image(data, source))
    if not image.url:
        raise GrokImageDownloadError(f"{source} has neither a URL nor b64_json.")
    check_download_url(image.url, source)
    return None


class Download(_Attempts):
    """
    Fetching one generated image from its URL (see :func:`inline_image` first): without any API header,
    following redirects (image hosts use CDNs; a redirect loop or to a non-http(s) URL is refused), within
    the connection's timeout, capped at ``max_bytes``, retried on transient faults.
    """

    def __init__(
        self,
        image: GeneratedImage,
        policy: RetryPolicy,
        *,
        timeout: float,
        connect_timeout: float,
        max_bytes: int,
        rng: Callable[[], float],
    ) -> None:
        super().__init__(policy, rng, None)
        self.image = image
        self.source = f"Image {image.index}"
        self.what = f"Download of image {image.index}"
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_bytes = max_bytes

    def request(self) -> Send:
        assert self.image.url is not None
        return Send("GET", self.image.url, {}, None, self.timeout, self.connect_timeout, self.max_bytes, True)

    def received(self, status: int, headers: Mapping[str, str], body: bytes, *, now: float) -> Retry | Done[Any]:
        if status in EXPIRED_URL_STATUSES:
            raise GrokImageDownloadError(
                f"{self.source}: the image host answered HTTP {status} for its URL, which usually means the "
                "temporary URL expired (they last about an hour). Use response_format='b64_json', or fetch sooner.",
                status=status,
            )
        if not 200 <= status < 300:
            return self._transient(f"image host answered HTTP {status}", status=status, headers=headers, now=now)
        return Done(ImageBytes(body, verify_image(body, self.source)))

    def failed(self, fault: Fault, detail: str, *, now: float) -> Retry:
        if fault == "too_large":
            raise too_large_error(self.source, self.max_bytes)
        if fault == "undecodable":
            raise GrokImageDownloadError(f"{self.source}: the image host sent an undecodable body: {detail}")
        if fault == "refused":
            raise GrokImageDownloadError(f"{self.source}: the download failed: {detail}")
        return self._transient(detail, status=None, headers=None, now=now)

    def _transient(self, failure: str, *, status: int | None, headers: Mapping[str, str] | None, now: float) -> Retry:
        delay = self._delay(status=status, headers=headers, now=now)
        if delay is None:
            raise GrokImageDownloadError(
                f"{self.source}: download failed after {self.attempts} attempts ({failure}).", status=status
            )
        return self._retry(delay, failure)
