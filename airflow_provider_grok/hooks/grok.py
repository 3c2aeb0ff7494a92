"""
GrokHook (``requests``) and GrokAsyncHook (``httpx``): the ``grok`` connection, and the short loops that drive
the protocol's request state machine (``protocol/machine.py``). The loops only move bytes and sleep: which
fault is retried, how errors read, redaction, deadlines and size caps are the protocol's.
"""

from __future__ import annotations

import asyncio
import contextvars
import difflib
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cached_property
from typing import Any, TypedDict, Unpack

import httpx
import requests
from airflow.sdk import BaseHook

from airflow_provider_grok import protocol
from airflow_provider_grok.exceptions import GrokError, GrokValidationError
from airflow_provider_grok.hooks._budget import AsyncRedisBudget, LocalBudget, RedisBudget, redis_target
from airflow_provider_grok.hooks._transport import TransportFault, aexchange, exchange, pooled_session
from airflow_provider_grok.protocol import (
    ApiCall,
    ConnectionSettings,
    Done,
    Download,
    EditParams,
    GeneratedImage,
    GenerationCall,
    GenerationOptions,
    GenerationParams,
    ImageBytes,
    ImageGenerationResult,
    Retry,
    RetryPolicy,
)

__all__ = ["GeneratedImage", "GrokAsyncHook", "GrokHook", "ImageBytes", "ImageGenerationResult", "log_label"]

# Connections kept per pool unless the caller says how many requests it runs at once: one call's split
# requests (n=100 is ten requests of 10).
DEFAULT_POOL_SIZE = protocol.MAX_IMAGES_PER_CALL // protocol.MAX_IMAGES_PER_REQUEST


class EditOptions(TypedDict, total=False):
    """The optional parameters of an edit (those of a generation but ``size``)."""

    model: str | None
    n: int
    response_format: str
    aspect_ratio: str | None
    resolution: str | None
    quality: str | None
    user: str | None
    extra_body: Mapping[str, Any] | None


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


class GrokHookBase(BaseHook):
    """
    What the sync and async Grok hooks share: the connection, its validation and the call parameters.

    :param grok_conn_id: the ``grok`` connection (base URL as host, API key as password).
    :param max_image_bytes: largest image ``fetch_image`` accepts, bytes (default 50 MiB).
    :param retry_backoff: first backoff between retries, seconds (doubles each retry, with jitter).
    :param max_connections: requests this hook runs at once (the operator's ``max_concurrency``); sizes the
        connection pools. Default: one call's split requests.
    :param max_response_bytes: largest API answer read, bytes (default 256 MiB).
    :param retry_unanswered: retry a request that got no answer (it may have been billed); the operator turns
        this off when a task has a ``max_cost_usd``.
    """

    conn_name_attr = "grok_conn_id"
    default_conn_name = "grok_default"
    conn_type = "grok"
    hook_name = "Grok Imagine"

    def __init__(
        self,
        grok_conn_id: str = default_conn_name,
        *,
        max_image_bytes: int = protocol.DEFAULT_MAX_IMAGE_BYTES,
        retry_backoff: float = 1.0,
        max_connections: int | None = None,
        max_response_bytes: int = protocol.MAX_RESPONSE_BYTES,
        retry_unanswered: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.retry_unanswered = retry_unanswered
        self.grok_conn_id = grok_conn_id
        self.max_image_bytes = max_image_bytes
        self.max_response_bytes = max_response_bytes
        self.retry_backoff = retry_backoff
        self.unknown_extras: list[str] = []
        # Split requests of one call run at once too: leave room for them on top of the caller's concurrency.
        self.pool_size = max(max_connections or 0, DEFAULT_POOL_SIZE)

    def _settings_from(self, conn: Any, extra: Mapping[str, Any]) -> ConnectionSettings:
        """Parse and validate a connection (the caller has registered its password with the secrets masker)."""
        settings, unknown = protocol.settings_from_connection(conn.host, conn.password, extra, conn.port)
        self.unknown_extras = unknown
        if unknown:
            self.log.warning(
                "Connection %r has extras this provider does not know and ignores: %s (known: %s).",
                self.grok_conn_id,
                ", ".join(unknown),
                ", ".join(protocol.CONNECTION_EXTRAS),
            )
        return settings

    @property
    def settings(self) -> ConnectionSettings:
        raise NotImplementedError

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.settings.max_retries,
            backoff_base=self.retry_backoff,
            retry_unanswered=self.retry_unanswered,
        )

    def _options(self, options: Mapping[str, Any], allowed: type, what: str) -> tuple[str, dict[str, Any]]:
        """Refuse unknown options; the model (only None means the connection's) and the rest."""
        unknown = sorted(set(options) - set(allowed.__annotations__))
        if unknown:
            raise GrokValidationError(
                f"Unknown {what} parameter {', '.join(unknown)}: the parameters are "
                f"{', '.join(allowed.__annotations__)}."
            )
        model = options.get("model")
        # An empty string is a mistake, refused by validation; it is never billed as the default model.
        return (self.settings.model if model is None else model), {k: v for k, v in options.items() if k != "model"}

    def build_params(self, prompt: str, **options: Unpack[GenerationOptions]) -> GenerationParams:
        """Validate a call, filling the model from the connection; raises before anything is sent."""
        model, rest = self._options(options, GenerationOptions, "generation")
        params = GenerationParams(prompt=prompt, model=model, **rest)
        for warning in protocol.unknown_values(params):
            self.log.warning("%s%s", _LOG_LABEL.get(), warning)
        return params

    def build_edit_params(self, prompt: str, images: Sequence[Any], **options: Unpack[EditOptions]) -> EditParams:
        """Validate an edit, its sources and options, filling the model from the connection; before any call."""
        model, rest = self._options(options, EditOptions, "edit")
        return protocol.build_edit_params(prompt, images, model=model, max_bytes=self.max_image_bytes, **rest)

    def _generation_call(self, body: dict[str, Any], path: str = protocol.GENERATIONS_PATH) -> GenerationCall:
        return GenerationCall(
            self.settings,
            self.retry_policy,
            body,
            rng=random.random,
            max_response_bytes=self.max_response_bytes,
            path=path,
        )

    def _next_step(
        self, call: ApiCall | Download, answer: tuple[int, Mapping[str, str], bytes] | TransportFault
    ) -> Retry | Done[Any]:
        """Hand the machine what came back (an answer, or the fault instead of one); log a retry it asks for."""
        step: Retry | Done[Any]
        if isinstance(answer, TransportFault):
            step = call.failed(answer.kind, answer.detail, now=time.time())
        else:
            step = call.received(*answer, now=time.time())
        if isinstance(step, Retry):
            self.log.warning("%s%s", _LOG_LABEL.get(), step.message)
        return step

    def _finish(self, params: GenerationParams | EditParams, result: ImageGenerationResult) -> ImageGenerationResult:
        """Log what the answer means (the protocol decides; an answer without any image raises)."""
        notes = protocol.settle_result(result, params.n, params.model)
        for note in notes[:-1]:
            self.log.warning("%s%s", _LOG_LABEL.get(), note)
        self.log.info("%s%s", _LOG_LABEL.get(), notes[-1])
        return result

    @staticmethod
    def _merge_chunks(
        params: GenerationParams | EditParams, outcomes: list[ImageGenerationResult | BaseException]
    ) -> ImageGenerationResult:
        """Join split requests; if one failed, raise its error carrying what the others produced."""
        done = [o for o in outcomes if isinstance(o, ImageGenerationResult)]
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            if isinstance(failure, GrokError) and done:
                failure.partial_result = protocol.merge_results(done, model=params.model)
            raise failure
        return protocol.merge_results(done, model=params.model)


class GrokHook(GrokHookBase):
    """
    Generate images with Grok Imagine over one pooled ``requests.Session``.

    Retries transient failures (408, 409, 429, 5xx, dropped connections) up to the connection's
    ``max_retries``, honouring ``Retry-After``; splits ``n`` above 10 into concurrent requests; caps
    request starts at the connection's ``requests_per_second``; bounds each attempt by the connection's
    ``timeout`` as a whole. The API key is masked in Airflow logs and only ever sent to the gateway, never
    to the image host, and redirects of API requests are not followed.

    :param grok_conn_id: the ``grok`` connection (base URL as host, API key as password).
    :param max_image_bytes: largest image ``fetch_image`` accepts, bytes (default 50 MiB).
    :param retry_backoff: first backoff between retries, seconds (doubles each retry, with jitter).
    :param max_connections: requests this hook runs at once; sizes the connection pools.
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
        return pooled_session(self.pool_size)

    @cached_property
    def download_session(self) -> requests.Session:
        """A separate session for image hosts, so no API header can ever reach them."""
        return pooled_session(self.pool_size)

    @cached_property
    def budget(self) -> LocalBudget | RedisBudget:
        """When a request may start: this process's limit, or the deployment's (``redis_conn_id``)."""
        settings = self.settings
        if settings.redis_conn_id:
            return RedisBudget(settings, redis_target(settings.redis_conn_id), self.log)
        return LocalBudget(settings.requests_per_second)

    def get_conn(self) -> requests.Session:
        return self.session

    def close(self) -> None:
        """Close pooled connections (also used by the operator's on_kill to stop in-flight work)."""
        for name in ("session", "download_session"):
            if name in self.__dict__:
                self.__dict__[name].close()

    def _drive(self, session: requests.Session, call: ApiCall | Download, *, throttled: bool) -> Any:
        """The transport loop: send what the machine says, hand it what came back, sleep when it says so."""
        while True:
            send = call.request()
            while throttled and (wait := self.budget.next_start()) > 0:
                time.sleep(wait)
            try:
                step = self._next_step(call, exchange(session, send))
            except TransportFault as fault:
                step = self._next_step(call, fault)
            if isinstance(step, Done):
                return step.value
            if throttled and step.pause_everyone:
                self.budget.pause(step.delay)
            time.sleep(step.delay)

    # --- generation ---

    def generate_images(self, prompt: str, **options: Unpack[GenerationOptions]) -> ImageGenerationResult:
        """
        Generate ``n`` images for ``prompt``. Only parameters that are set are sent.

        :param prompt: what to draw (non-empty).
        :param model: model name; defaults to the connection's ``model`` extra, else ``grok-imagine-image``.
        :param n: number of images, 1-100; above 10 the call is split into concurrent requests of 10.
        :param response_format: ``url`` (temporary URLs, about an hour) or ``b64_json`` (inline bytes).
        :param aspect_ratio: e.g. ``16:9`` (xAI and xAI-style gateways).
        :param resolution: ``1k``, ``1.5k`` or ``2k`` (xAI and xAI-style gateways).
        :param size: ``1024x1024``, ``1536x1024`` or ``1024x1536`` (OpenAI-style gateways only).
        :param quality: ``standard``/``hd`` (OpenAI-style gateways) or ``low``/``medium``/``auto`` (xAI 2.0).
        :param user: end-user id for the gateway's abuse monitoring.
        :param extra_body: further JSON fields for gateways that take them.
        :raises GrokValidationError: before any request, for an invalid parameter.
        :raises GrokContentFilteredError: when moderation returned no image at all.
        """
        return self.generate(self.build_params(prompt, **options))

    def generate(self, params: GenerationParams | EditParams) -> ImageGenerationResult:
        """Run an already validated generation (or edit, see :meth:`edit_images`), split by 10."""
        path = protocol.EDITS_PATH if isinstance(params, EditParams) else protocol.GENERATIONS_PATH
        bodies = params.request_bodies()
        if len(bodies) == 1:
            return self._finish(params, self._post(bodies[0], path))
        self.log.info("Splitting n=%d into %d concurrent requests of at most 10.", params.n, len(bodies))
        with ThreadPoolExecutor(len(bodies), thread_name_prefix="grok-split") as pool:
            # Each thread runs in a copy of this context, so its log lines keep the caller's label.
            futures = [pool.submit(contextvars.copy_context().run, self._post, body, path) for body in bodies]
            outcomes: list[ImageGenerationResult | BaseException] = []
            for future in futures:
                error = future.exception()
                outcomes.append(error if error is not None else future.result())
        return self._finish(params, self._merge_chunks(params, outcomes))

    def edit_images(self, prompt: str, images: Sequence[Any], **options: Unpack[EditOptions]) -> ImageGenerationResult:
        """
        Edit images with xAI's JSON ``POST /v1/images/edits`` (the openai SDK's multipart ``images.edit()``
        is refused by xAI): restyle, combine or localise ``images`` as ``prompt`` says.

        :param prompt: what to do; several sources are named ``<IMAGE_0>``, ``<IMAGE_1>``... in it.
        :param images: 1 to 3 sources (5 on ``grok-imagine-image-2.0``), each image bytes (sent as a data URI
            after checking they are a JPEG, PNG or WebP under ``max_image_bytes``), an http(s) URL or a
            ``data:image/...`` URI (sent as given), or ``{"file_id": "..."}`` from xAI's Files API.
        :param model, n, response_format, resolution, quality, user, extra_body: as for
            :meth:`generate_images`.
        :param aspect_ratio: only with several sources (one source keeps its own ratio).
        :raises GrokValidationError: before any request: no source, too many, a source that is not an image,
            ``aspect_ratio`` with one source, a prompt naming a source that is not there.
        """
        return self.generate(self.build_edit_params(prompt, images, **options))

    def _post(self, body: dict[str, Any], path: str) -> ImageGenerationResult:
        result: ImageGenerationResult = self._drive(self.session, self._generation_call(body, path), throttled=True)
        return result

    # --- images ---

    def fetch_image(self, image: GeneratedImage) -> ImageBytes:
        """
        The image's bytes (an :class:`ImageBytes`, which is ``bytes`` with its ``image_type``): decoded from
        ``b64_json``, or downloaded from ``url`` without any API header.

        Downloads are http(s) only, capped at ``max_image_bytes``, bounded by the connection's ``timeout``,
        retried on transient faults, and the bytes are verified to be JPEG, PNG or WebP.

        :raises GrokImageDownloadError: expired URL, too large, not an image, or the host keeps failing.
        """
        inline = protocol.inline_image(image, self.max_image_bytes)
        if inline is not None:
            return inline
        settings = self.settings
        download = Download(
            image,
            self.retry_policy,
            timeout=settings.timeout,
            connect_timeout=settings.connect_timeout,
            max_bytes=self.max_image_bytes,
            rng=random.random,
        )
        data: ImageBytes = self._drive(self.download_session, download, throttled=False)
        return data

    # --- connection test ---

    def test_connection(self) -> tuple[bool, str]:
        """
        Check the base URL and the key without generating anything (``GET /v1/models``, which is free).

        401/403 fail with the server's message; a gateway without ``/v1/models`` (404) passes, saying
        the key could not be verified without spending money. Unknown extras fail it, named.
        """
        try:
            settings = self.settings
            call = ApiCall(settings, RetryPolicy(max_retries=0), "GET", protocol.MODELS_PATH, rng=random.random)
            status, headers, body = exchange(self.session, call.request())
        except GrokError as err:
            return False, err.message
        except TransportFault as fault:
            return False, f"Could not reach the gateway: {protocol.redact(fault.detail, settings.api_key)}"
        ok, message = protocol.connection_test_outcome(
            status, body.decode("utf-8", "replace"), protocol.header(headers, "content-type"), settings
        )
        if self.unknown_extras:
            # Shown in the UI's answer, not only in the api-server log: a typo must not pass silently.
            names = []
            for name in self.unknown_extras:
                close = difflib.get_close_matches(name, protocol.CONNECTION_EXTRAS, n=1)
                names.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
            return False, (
                f"{message} But the connection has extras this provider does not know and would ignore: "
                f"{', '.join(names)}. Known extras: {', '.join(protocol.CONNECTION_EXTRAS)}."
            )
        return ok, message


class GrokAsyncHook(GrokHookBase):
    """
    The async twin of :class:`GrokHook` on ``httpx.AsyncClient``, for triggers.

    The same protocol state machine (validation, error mapping, retry decisions, deadlines, the ``/v1``
    rule), the same rate cap. Reads its connection with the async API, because the sync one can deadlock in
    the triggerer. Call :meth:`aclose` when done (the trigger does, also on cancellation).

    :param grok_conn_id: the ``grok`` connection (base URL as host, API key as password).
    :param retry_backoff: first backoff between retries, seconds (doubles each retry, with jitter).
    :param max_connections: requests this hook runs at once; sizes the connection pool.
    """

    def __init__(self, grok_conn_id: str = GrokHookBase.default_conn_name, **kwargs: Any) -> None:
        super().__init__(grok_conn_id, **kwargs)
        self._settings: ConnectionSettings | None = None
        self._client: httpx.AsyncClient | None = None
        self._budget: _AsyncLocalBudget | AsyncRedisBudget | None = None
        self._loading = asyncio.Lock()  # one read of the connection (and one budget) for concurrent callers

    @property
    def settings(self) -> ConnectionSettings:
        if self._settings is None:
            raise RuntimeError("GrokAsyncHook: await load_settings() before reading settings.")
        return self._settings

    async def load_settings(self) -> ConnectionSettings:
        """Read and validate the connection once, without blocking the event loop (concurrent callers wait)."""
        async with self._loading:
            if self._settings is None:
                self._settings = await self._read_settings()
        return self._settings

    async def _read_settings(self) -> ConnectionSettings:
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
        settings = self._settings_from(conn, extra)
        if settings.redis_conn_id:
            # The redis provider's hook reads its connection synchronously: in a thread, off the loop.
            target = await asyncio.to_thread(redis_target, settings.redis_conn_id)
            self._budget = AsyncRedisBudget(settings, target, self.log)
        else:
            self._budget = _AsyncLocalBudget(LocalBudget(settings.requests_per_second))
        return settings

    @property
    def budget(self) -> _AsyncLocalBudget | AsyncRedisBudget:
        """When a request may start (see :attr:`GrokHook.budget`); set by :meth:`load_settings`."""
        if self._budget is None:
            raise RuntimeError("GrokAsyncHook: await load_settings() before reading the budget.")
        return self._budget

    async def client(self) -> httpx.AsyncClient:
        settings = await self.load_settings()  # before the check: no await between it and the assignment
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
                limits=httpx.Limits(max_connections=self.pool_size, max_keepalive_connections=self.pool_size),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._budget is not None:
            await self._budget.aclose()

    async def _drive(self, call: ApiCall) -> Any:
        """The async transport loop (see :meth:`GrokHook._drive`)."""
        client = await self.client()
        while True:
            send = call.request()
            while (wait := await self.budget.next_start()) > 0:
                await asyncio.sleep(wait)
            try:
                step = self._next_step(call, await aexchange(client, send))
            except TransportFault as fault:
                step = self._next_step(call, fault)
            if isinstance(step, Done):
                return step.value
            if step.pause_everyone:
                await self.budget.pause(step.delay)
            await asyncio.sleep(step.delay)

    async def generate_images(self, prompt: str, **options: Unpack[GenerationOptions]) -> ImageGenerationResult:
        """Async :meth:`GrokHook.generate_images`: same parameters, same validation, same result."""
        await self.load_settings()
        return await self.generate(self.build_params(prompt, **options))

    async def generate(self, params: GenerationParams | EditParams) -> ImageGenerationResult:
        await self.load_settings()
        path = protocol.EDITS_PATH if isinstance(params, EditParams) else protocol.GENERATIONS_PATH
        bodies = params.request_bodies()
        if len(bodies) == 1:
            return self._finish(params, await self._post(bodies[0], path))
        outcomes = await asyncio.gather(*(self._post(body, path) for body in bodies), return_exceptions=True)
        return self._finish(params, self._merge_chunks(params, list(outcomes)))

    async def edit_images(
        self, prompt: str, images: Sequence[Any], **options: Unpack[EditOptions]
    ) -> ImageGenerationResult:
        """Async :meth:`GrokHook.edit_images`: same sources, same validation, same result."""
        await self.load_settings()
        return await self.generate(self.build_edit_params(prompt, images, **options))

    async def _post(self, body: dict[str, Any], path: str) -> ImageGenerationResult:
        result: ImageGenerationResult = await self._drive(self._generation_call(body, path))
        return result


class _AsyncLocalBudget:
    """A :class:`LocalBudget` behind the async budget's interface (its calls never block)."""

    def __init__(self, local: LocalBudget) -> None:
        self.local = local

    async def next_start(self) -> float:
        return self.local.next_start()

    async def pause(self, seconds: float) -> None:
        self.local.pause(seconds)

    async def aclose(self) -> None:
        return None
