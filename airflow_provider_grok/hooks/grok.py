"""GrokHook: the ``grok`` connection, authentication and ``POST /v1/images/generations`` over ``requests``."""

from __future__ import annotations

import asyncio
import contextvars
import difflib
import json
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Unpack

import httpx
import requests
import urllib3
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter

from airflow_provider_grok import api
from airflow_provider_grok.api import (
    ConnectionSettings,
    GeneratedImage,
    GenerationOptions,
    GenerationParams,
    ImageGenerationResult,
    RateLimiter,
    RetryPolicy,
)
from airflow_provider_grok.exceptions import (
    GrokContentFilteredError,
    GrokError,
    GrokImageDownloadError,
    GrokNotFoundError,
    GrokResponseError,
    GrokTransportError,
    GrokValidationError,
)

__all__ = ["GeneratedImage", "GrokAsyncHook", "GrokHook", "ImageGenerationResult", "log_label"]

# What the hook's log lines are about ("Prompt 3: ..."), set by callers that run many calls in threads.
_LOG_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("grok_log_label", default="")


@contextmanager
def log_label(label: str) -> Iterator[None]:
    """Prefix the hook's log lines in this thread (or task) with ``label``, e.g. the prompt they concern."""
    token = _LOG_LABEL.set(f"{label}: ")
    try:
        yield
    finally:
        _LOG_LABEL.reset(token)


# Connections kept per pool unless the caller says how many requests it runs at once: one call's split
# requests (n=100 is ten requests of 10).
DEFAULT_POOL_SIZE = api.MAX_IMAGES_PER_CALL // api.MAX_IMAGES_PER_REQUEST
READ_CHUNK = 1024 * 1024
# Image hosts answer these for an expired or revoked temporary URL: retrying cannot help.
EXPIRED_URL_STATUSES = frozenset({401, 403, 404, 410})


class GrokHookBase(BaseHook):
    """
    What the sync and async Grok hooks share: the connection, its validation and the call parameters.

    :param grok_conn_id: the ``grok`` connection (base URL as host, API key as password).
    :param max_image_bytes: largest image ``fetch_image`` accepts, bytes (default 50 MiB).
    :param retry_backoff: first backoff between retries, seconds (doubles each retry, with jitter).
    :param max_connections: requests this hook runs at once (the operator's ``max_concurrency``); sizes the
        connection pools. Default: one call's split requests.
    :param max_response_bytes: largest API answer read, bytes (default 256 MiB).
    """

    conn_name_attr = "grok_conn_id"
    default_conn_name = "grok_default"
    conn_type = "grok"
    hook_name = "Grok Imagine"

    def __init__(
        self,
        grok_conn_id: str = default_conn_name,
        *,
        max_image_bytes: int = api.DEFAULT_MAX_IMAGE_BYTES,
        retry_backoff: float = 1.0,
        max_connections: int | None = None,
        max_response_bytes: int = api.MAX_RESPONSE_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_response_bytes = max_response_bytes
        self.grok_conn_id = grok_conn_id
        self.max_image_bytes = max_image_bytes
        self.unknown_extras: list[str] = []
        self.retry_backoff = retry_backoff
        # Split requests of one call run at once too: leave room for them on top of the caller's concurrency.
        self.pool_size = max(max_connections or 0, DEFAULT_POOL_SIZE)

    def _settings_from(self, conn: Any, extra: Mapping[str, Any]) -> ConnectionSettings:
        """Parse and validate a connection (the caller has registered its password with the secrets masker)."""
        settings, unknown = api.settings_from_connection(conn.host, conn.password, extra, conn.port)
        self.unknown_extras = unknown
        if unknown:
            self.log.warning(
                "Connection %r has extras this provider does not know and ignores: %s (known: %s).",
                self.grok_conn_id,
                ", ".join(unknown),
                ", ".join(api.CONNECTION_EXTRAS),
            )
        return settings

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.settings.max_retries, backoff_base=self.retry_backoff)

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        return RateLimiter(self.settings.requests_per_second)

    @property
    def settings(self) -> ConnectionSettings:
        raise NotImplementedError

    def build_params(self, prompt: str, **options: Unpack[GenerationOptions]) -> GenerationParams:
        """Validate a call, filling the model from the connection; raises before anything is sent."""
        unknown = sorted(set(options) - set(GenerationOptions.__annotations__))
        if unknown:
            raise GrokValidationError(
                f"Unknown generation parameter {', '.join(unknown)}: the parameters are "
                f"{', '.join(GenerationOptions.__annotations__)}."
            )
        rest: dict[str, Any] = {name: value for name, value in options.items() if name != "model"}
        # Only None means "the connection's model": an empty string is a mistake, refused by validation.
        model = options.get("model")
        params = GenerationParams(prompt=prompt, model=self.settings.model if model is None else model, **rest)
        for warning in api.unknown_values(params):
            self.log.warning("%s%s", _LOG_LABEL.get(), warning)
        return params

    def _retry_delay(
        self,
        method: str,
        url: str,
        retries_done: int,
        *,
        error: Exception | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: str = "",
    ) -> float:
        """
        After a failed API attempt (a transport ``error`` or an HTTP ``status``): the seconds to wait before
        retrying, logged, or the final :class:`GrokError` raised. Shared by the sync and async transports.
        """
        settings = self.settings
        what = f"Grok {method} {url}"
        if error is not None:
            failure = api.redact(f"{type(error).__name__}: {error}", settings.api_key)
            delay = self.retry_policy.delay(retries_done, status=None)
            if delay is None:
                raise GrokTransportError(
                    f"{what} got no HTTP answer after {retries_done + 1} attempts: {failure}. Check the "
                    "connection's base URL and the network; raise the 'timeout' extra for slow gateways."
                ) from None
        elif status is not None and 300 <= status < 400:
            location = api.redact(api.header(headers, "location") or "another address", settings.api_key)
            raise GrokNotFoundError(
                f"{what} was redirected (HTTP {status}) to {location[:200]}. Redirects are not followed, so the "
                "API key and extra headers never go to another address: store the final URL as the connection's "
                "base URL.",
                status=status,
            )
        else:
            assert status is not None
            failure = f"HTTP {status}"
            delay = self.retry_policy.delay(retries_done, status=status, headers=headers)
            if delay is None:
                raise api.error_from_response(
                    status,
                    body,
                    content_type=api.header(headers, "content-type"),
                    request_id=api.request_id_from_headers(headers, settings.api_key),
                    secret=settings.api_key,
                    attempts=retries_done + 1,
                )
        self._log_retry(what, failure, retries_done, delay)
        return delay

    def _generation_result(
        self, body: dict[str, Any], content: bytes, headers: Mapping[str, str]
    ) -> ImageGenerationResult:
        """Read a 2xx answer to ``body`` (a body that is not JSON becomes a readable GrokResponseError)."""
        try:
            payload = json.loads(content)
        except ValueError:
            payload = content[:200].decode("utf-8", "replace")
        secret = self.settings.api_key
        return api.parse_generation_response(
            payload, requested=body["n"], request_id=api.request_id_from_headers(headers, secret), secret=secret
        )

    def _too_large_answer(self, what: str) -> GrokResponseError:
        return GrokResponseError(
            f"{what}: the answer is larger than the {self.max_response_bytes}-byte limit (ten 2k images are tens "
            "of MB); refusing to read it."
        )

    def _log_retry(self, what: str, failure: str, retries_done: int, delay: float) -> None:
        self.log.warning(
            "%s%s failed (%s); retry %d of %d in %.1f s. A retried generation may be billed again.",
            _LOG_LABEL.get(),
            what,
            failure,
            retries_done + 1,
            self.retry_policy.max_retries,
            delay,
        )

    def _finish(self, params: GenerationParams, result: ImageGenerationResult) -> ImageGenerationResult:
        """Log the outcome; zero images for a prompt is an error, fewer than asked a warning."""
        label = _LOG_LABEL.get()
        if result.malformed:
            self.log.warning(
                "%sThe gateway returned %d items with neither an image URL nor b64_json (billed, not images).",
                label,
                result.malformed,
            )
        if result.extra_returned:
            self.log.warning(
                "%sThe gateway returned %d images more than the %d asked for; they are dropped.",
                label,
                result.extra_returned,
                params.n,
            )
        if not result.images and result.malformed:
            raise GrokResponseError(
                f"The gateway answered with {result.malformed} items but no image in any of them.",
                status=200,
                request_id=result.request_ids[0] if result.request_ids else None,
            )
        if not result.images:
            raise GrokContentFilteredError(
                f"The gateway returned no images for the prompt (asked for {params.n}): content moderation "
                "refused them all, and they may still be billed. Rephrase the prompt.",
                status=200,
                request_id=result.request_ids[0] if result.request_ids else None,
            )
        if result.filtered_count:
            self.log.warning(
                "%sContent moderation removed %d of %d images (request ids: %s).",
                _LOG_LABEL.get(),
                result.filtered_count,
                result.requested,
                ", ".join(result.request_ids) or "none",
            )
        cost = f", cost ${result.cost_usd:.4f}" if result.cost_usd is not None else ""
        self.log.info(
            "%sGenerated %d of %d images with %s%s.", _LOG_LABEL.get(), len(result.images), params.n, params.model, cost
        )
        return result

    @staticmethod
    def _merge_chunks(
        params: GenerationParams, outcomes: list[ImageGenerationResult | BaseException]
    ) -> ImageGenerationResult:
        """Join split requests; if one failed, raise its error carrying what the others produced."""
        done = [o for o in outcomes if isinstance(o, ImageGenerationResult)]
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            if isinstance(failure, GrokError) and done:
                failure.partial_result = api.merge_results(done, model=params.model)
            raise failure
        return api.merge_results(done, model=params.model)

    @staticmethod
    def _expired_url_error(image: GeneratedImage, status: int) -> GrokImageDownloadError:
        return GrokImageDownloadError(
            f"Image {image.index}: the image host answered HTTP {status} for its URL, which usually means the "
            "temporary URL expired (they last about an hour). Use response_format='b64_json', or fetch sooner.",
            status=status,
        )


class GrokHook(GrokHookBase):
    """
    Generate images with Grok Imagine over one pooled ``requests.Session``.

    Retries transient failures (408, 409, 429, 5xx, dropped connections) up to the connection's
    ``max_retries``, honouring ``Retry-After``; splits ``n`` above 10 into concurrent requests; caps
    request starts at the connection's ``requests_per_second``. The API key is masked in Airflow logs
    and is only ever sent to the gateway, never to the image host.

    :param grok_conn_id: the ``grok`` connection (base URL as host, API key as password).
    :param max_image_bytes: largest image ``fetch_image`` accepts, bytes (default 50 MiB).
    :param retry_backoff: first backoff between retries, seconds (doubles each retry, with jitter).
    """

    @cached_property
    def settings(self) -> ConnectionSettings:
        from airflow.sdk.log import mask_secret

        conn = self.get_connection(self.grok_conn_id)
        if conn.password:
            mask_secret(conn.password)
        return self._settings_from(conn, conn.extra_dejson)

    @cached_property
    def session(self) -> requests.Session:
        """The API session. It has no default headers: the key is added per API request only."""
        return _pooled_session(self.pool_size)

    @cached_property
    def download_session(self) -> requests.Session:
        """A separate session for image hosts, so no API header can ever reach them."""
        return _pooled_session(self.pool_size)

    def get_conn(self) -> requests.Session:
        return self.session

    def close(self) -> None:
        """Close pooled connections (also used by the operator's on_kill to stop in-flight work)."""
        for name in ("session", "download_session"):
            if name in self.__dict__:
                self.__dict__[name].close()

    # --- generation ---

    def generate_images(self, prompt: str, **options: Unpack[GenerationOptions]) -> ImageGenerationResult:
        """
        Generate ``n`` images for ``prompt``. Only parameters that are set are sent.

        :param prompt: what to draw (non-empty).
        :param model: model name; defaults to the connection's ``model`` extra, else ``grok-imagine-image``.
        :param n: number of images, 1-100; above 10 the call is split into concurrent requests of 10.
        :param response_format: ``url`` (temporary URLs, about an hour) or ``b64_json`` (inline bytes).
        :param aspect_ratio: e.g. ``16:9`` (xAI and xAI-style gateways).
        :param resolution: ``1k`` or ``2k`` (xAI and xAI-style gateways).
        :param size: ``1024x1024``, ``1536x1024`` or ``1024x1536`` (OpenAI-style gateways only).
        :param quality: ``standard``/``hd`` (OpenAI-style gateways) or ``low``/``medium`` (xAI 2.0 model).
        :param user: end-user id for the gateway's abuse monitoring.
        :param extra_body: further JSON fields for gateways that take them.
        :raises GrokValidationError: before any request, for an invalid parameter.
        :raises GrokContentFilteredError: when moderation returned no image at all.
        """
        return self.generate(self.build_params(prompt, **options))

    def generate(self, params: GenerationParams) -> ImageGenerationResult:
        """Run an already validated :class:`GenerationParams` (see :meth:`generate_images`)."""
        bodies = params.request_bodies()
        if len(bodies) == 1:
            return self._finish(params, self._post_generation(bodies[0]))
        self.log.info("Splitting n=%d into %d concurrent requests of at most 10.", params.n, len(bodies))
        with ThreadPoolExecutor(len(bodies), thread_name_prefix="grok-split") as pool:
            # Each thread runs in a copy of this context, so its log lines keep the caller's label.
            futures = [pool.submit(contextvars.copy_context().run, self._post_generation, body) for body in bodies]
            outcomes: list[ImageGenerationResult | BaseException] = []
            for future in futures:
                error = future.exception()
                outcomes.append(error if error is not None else future.result())
        return self._finish(params, self._merge_chunks(params, outcomes))

    def _post_generation(self, body: dict[str, Any]) -> ImageGenerationResult:
        response, content = self._call("POST", api.GENERATIONS_PATH, body)
        return self._generation_result(body, content, response.headers)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[requests.Response, bytes]:
        """Send one API request with throttling and bounded retries; return a 2xx response and its body, or raise."""
        settings = self.settings
        url = settings.url(path)
        retries = 0
        while True:
            if wait := self.rate_limiter.reserve():
                time.sleep(wait)
            try:
                response, content = self._send(method, url, body)
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError,
                _DeadlineExceeded,
            ) as err:
                delay = self._retry_delay(method, url, retries, error=err)
            else:
                if 200 <= response.status_code < 300:
                    return response, content
                delay = self._retry_delay(
                    method,
                    url,
                    retries,
                    status=response.status_code,
                    headers=response.headers,
                    body=content.decode("utf-8", "replace"),
                )
            time.sleep(delay)
            retries += 1

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> tuple[requests.Response, bytes]:
        """
        One attempt, within the connection's ``timeout`` as a whole and capped in size. Redirects are not
        followed: requests would forward ``extra_headers`` to another origin.
        """
        settings = self.settings
        deadline = time.monotonic() + settings.timeout
        response = self.session.request(
            method,
            url,
            json=body,
            headers=settings.api_headers(),
            timeout=(settings.connect_timeout, settings.timeout),
            stream=True,
            allow_redirects=False,
        )
        try:
            content = _read_within(response, deadline, self.max_response_bytes)
        except _TooLarge:
            raise self._too_large_answer(f"Grok {method} {url}") from None
        finally:
            response.close()
        return response, content

    # --- images ---

    def fetch_image(self, image: GeneratedImage) -> bytes:
        """
        The image's bytes: decoded from ``b64_json``, or downloaded from ``url`` without any API header.

        Downloads are http(s) only, capped at ``max_image_bytes``, retried on transient faults, and the
        bytes are verified to be JPEG, PNG or WebP.

        :raises GrokImageDownloadError: expired URL, too large, not an image, or the host keeps failing.
        """
        source = f"Image {image.index}"
        if image.b64_json:
            return api.decode_b64_image(image.b64_json, source, self.max_image_bytes)
        if not image.url:
            raise GrokImageDownloadError(f"{source} has neither a URL nor b64_json.")
        if image.url.startswith("data:"):
            return api.decode_b64_image(image.url, source, self.max_image_bytes)
        api.check_download_url(image.url, source)
        retries = 0
        while True:
            try:
                data = self._download(image)
            except _TransientDownloadError as err:
                delay = self.retry_policy.delay(retries, status=err.status)
                if delay is None:
                    raise GrokImageDownloadError(
                        f"{source}: download failed after {retries + 1} attempts ({err}).", status=err.status
                    ) from None
                self._log_retry(f"Download of {source.lower()}", str(err), retries, delay)
                time.sleep(delay)
                retries += 1
            else:
                api.verify_image(data, source)
                return data

    def _download(self, image: GeneratedImage) -> bytes:
        """
        One download attempt: bytes, a final GrokImageDownloadError, or a _TransientDownloadError. Every
        fault of ``requests`` ends as one of those: a body cut short is transient, a redirect loop or a
        redirect to a non-http(s) URL is final.
        """
        assert image.url is not None
        source = f"Image {image.index}"
        limit = self.max_image_bytes
        deadline = time.monotonic() + self.settings.timeout
        try:
            with self.download_session.get(
                image.url, stream=True, timeout=(self.settings.connect_timeout, self.settings.timeout)
            ) as response:
                if response.status_code in EXPIRED_URL_STATUSES:
                    raise self._expired_url_error(image, response.status_code)
                if not response.ok:
                    raise _TransientDownloadError(
                        f"image host answered HTTP {response.status_code}", response.status_code
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise api.too_large_error(source, limit, int(declared))
                return _read_within(response, deadline, limit)
        except _TooLarge:
            raise api.too_large_error(source, limit) from None
        except urllib3.exceptions.DecodeError as err:  # a corrupt Content-Encoding: the same on every attempt
            raise GrokImageDownloadError(f"{source}: the image host sent an undecodable body: {err}") from None
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError,
            _DeadlineExceeded,
        ) as err:
            raise _TransientDownloadError(f"{type(err).__name__}: {err}", None) from None
        except requests.RequestException as err:  # redirect loops, unsupported schemes, undecodable bodies
            raise GrokImageDownloadError(f"{source}: the download failed: {type(err).__name__}: {err}") from None

    # --- connection test ---

    def test_connection(self) -> tuple[bool, str]:
        """
        Check the base URL and the key without generating anything (``GET /v1/models``, which is free).

        401/403 fail with the server's message; a gateway without ``/v1/models`` (404) passes, saying
        the key could not be verified without spending money.
        """
        try:
            settings = self.settings
            response = self.session.get(
                settings.url(api.MODELS_PATH),
                headers=settings.api_headers(),
                timeout=(settings.connect_timeout, 30),
            )
        except GrokError as err:
            return False, err.message
        except requests.RequestException as err:
            return False, f"Could not reach the gateway: {type(err).__name__}: {err}"
        ok, message = api.connection_test_outcome(
            response.status_code, response.text, response.headers.get("content-type"), settings
        )
        if self.unknown_extras:
            # Shown in the UI's answer, not only in the api-server log: a typo must not pass silently.
            names = []
            for name in self.unknown_extras:
                close = difflib.get_close_matches(name, api.CONNECTION_EXTRAS, n=1)
                names.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
            return False, (
                f"{message} But the connection has extras this provider does not know and would ignore: "
                f"{', '.join(names)}. Known extras: {', '.join(api.CONNECTION_EXTRAS)}."
            )
        return ok, message


class GrokAsyncHook(GrokHookBase):
    """
    The async twin of :class:`GrokHook` on ``httpx.AsyncClient``, for triggers.

    Same protocol core (validation, error mapping, retry decisions, the ``/v1`` rule), the same timeouts,
    retries and rate cap. Reads its connection with the async API, because the sync one can deadlock in
    the triggerer. Call :meth:`aclose` when done (the trigger does, also on cancellation).

    :param grok_conn_id: the ``grok`` connection (base URL as host, API key as password).
    :param retry_backoff: first backoff between retries, seconds (doubles each retry, with jitter).
    """

    def __init__(self, grok_conn_id: str = GrokHookBase.default_conn_name, **kwargs: Any) -> None:
        super().__init__(grok_conn_id, **kwargs)
        self._settings: ConnectionSettings | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def settings(self) -> ConnectionSettings:
        if self._settings is None:
            raise RuntimeError("GrokAsyncHook: await load_settings() before reading settings.")
        return self._settings

    async def load_settings(self) -> ConnectionSettings:
        """Read and validate the connection once, without blocking the event loop."""
        if self._settings is None:
            # The compat helpers pick what is safe on an event loop for this Airflow version: before 3.3.2,
            # aget_connection and extra_dejson mask secrets with a blocking call to the supervisor.
            from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
            from airflow.sdk import log as sdk_log

            conn = await get_async_connection(self.grok_conn_id, hook=self)
            extra = await get_async_extra_dejson(conn)
            if conn.password:
                if hasattr(sdk_log, "amask_secret"):  # Airflow 3.3+
                    await sdk_log.amask_secret(conn.password)
                else:
                    sdk_log.mask_secret(conn.password)
            self._settings = self._settings_from(conn, extra)
        return self._settings

    async def client(self) -> httpx.AsyncClient:
        if self._client is None:
            settings = await self.load_settings()
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
                limits=httpx.Limits(max_connections=self.pool_size, max_keepalive_connections=self.pool_size),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def generate_images(self, prompt: str, **options: Unpack[GenerationOptions]) -> ImageGenerationResult:
        """Async :meth:`GrokHook.generate_images`: same parameters, same validation, same result."""
        await self.load_settings()
        return await self.generate(self.build_params(prompt, **options))

    async def generate(self, params: GenerationParams) -> ImageGenerationResult:
        await self.load_settings()
        bodies = params.request_bodies()
        if len(bodies) == 1:
            return self._finish(params, await self._post_generation(bodies[0]))
        outcomes = await asyncio.gather(*(self._post_generation(body) for body in bodies), return_exceptions=True)
        return self._finish(params, self._merge_chunks(params, list(outcomes)))

    async def _post_generation(self, body: dict[str, Any]) -> ImageGenerationResult:
        headers, content = await self._call("POST", api.GENERATIONS_PATH, body)
        return self._generation_result(body, content, headers)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[httpx.Headers, bytes]:
        """Send one API request with throttling and bounded retries; return a 2xx answer's headers and body."""
        settings = await self.load_settings()
        client = await self.client()
        url = settings.url(path)
        retries = 0
        while True:
            if wait := self.rate_limiter.reserve():
                await asyncio.sleep(wait)
            try:
                status, headers, content = await self._send(client, method, url, body)
            except (httpx.TransportError, _DeadlineExceeded) as err:
                delay = self._retry_delay(method, url, retries, error=err)
            else:
                if 200 <= status < 300:
                    return headers, content
                delay = self._retry_delay(
                    method, url, retries, status=status, headers=headers, body=content.decode("utf-8", "replace")
                )
            await asyncio.sleep(delay)
            retries += 1

    async def _send(
        self, client: httpx.AsyncClient, method: str, url: str, body: dict[str, Any] | None
    ) -> tuple[int, httpx.Headers, bytes]:
        """One attempt within the connection's ``timeout`` as a whole, capped in size (see the sync twin)."""
        settings = self.settings
        try:
            async with asyncio.timeout(settings.timeout):
                async with client.stream(method, url, json=body, headers=settings.api_headers()) as response:
                    chunks, size = [], 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > self.max_response_bytes:
                            raise self._too_large_answer(f"Grok {method} {url}")
                        chunks.append(chunk)
                    return response.status_code, response.headers, b"".join(chunks)
        except TimeoutError:
            raise _DeadlineExceeded(_DEADLINE_MESSAGE) from None


_DEADLINE_MESSAGE = "the whole answer did not arrive within the connection's timeout (a limit on one attempt)"


class _DeadlineExceeded(Exception):
    """An attempt ran past the connection's ``timeout`` (a host dripping bytes never trips a read timeout)."""


class _TooLarge(Exception):
    """A body grew past its cap while being read."""


def _read_within(response: requests.Response, deadline: float, limit: int) -> bytes:
    """
    Read a streamed body by the chunk as it arrives (``read1``: a slow host cannot make one read wait for a
    full chunk), refusing to go past ``deadline`` (monotonic) or ``limit`` bytes.
    """
    chunks, size = [], 0
    while chunk := response.raw.read1(READ_CHUNK, decode_content=True):
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise _DeadlineExceeded(_DEADLINE_MESSAGE)
    return b"".join(chunks)


class _TransientDownloadError(Exception):
    """A download fault worth retrying: a 5xx/429 (``status``) or a transport error (``status`` None)."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


def _pooled_session(size: int) -> requests.Session:
    session = requests.Session()
    # Retries are ours (billing-aware and logged), so urllib3's own are off.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
