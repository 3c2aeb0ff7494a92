"""
A local Grok Imagine gateway: a real HTTP server on loopback for tests, demos and users' own DAG tests.

It speaks both gateway dialects (``xai``: aspect_ratio/resolution, flat errors, usage with cost ticks;
``openai``: size/quality, OpenAI-style errors, revised prompts), checks the bearer key, returns real
JPEG/PNG images, serves image URLs from a second origin that records request headers, keeps a call
log, and injects faults on demand::

    with GrokSimulator(dialect="xai", latency=0.2) as sim:
        sim.fail(503, times=2)
        os.environ["AIRFLOW_CONN_GROK_DEFAULT"] = sim.connection_json()
        ...
        assert len(sim.generation_calls) == 3
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import itertools
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from airflow_provider_grok import protocol
from airflow_provider_grok.testing.images import FORMATS, PALETTE, image_dimensions, unique_image

Dialect = Literal["xai", "openai"]
DEFAULT_API_KEY = "sim-key-0f1e2d3c4b5a69788796a5b4c3d2e1f0"
TICKS_PER_IMAGE = 200_000_000  # $0.02, as xAI bills grok-imagine-image
MODELS = {
    "xai": ("grok-imagine-image", "grok-imagine-image-pro", "grok-imagine-image-quality", "grok-imagine-image-2.0"),
    "openai": ("grok-imagine",),
}
# Optional fields each dialect accepts; anything else is refused the way that gateway refuses it.
DIALECT_FIELDS = {
    dialect: {name for name, dialects in protocol.OPTIONAL_FIELDS.items() if dialect in dialects} for dialect in MODELS
}
CORE = {"prompt", "model", "n", "response_format"}
API_MISBEHAVIOURS = ("drip", "echo_key", "extra_images", "placeholders", "no_image", "redirect")
DOWNLOAD_MISBEHAVIOURS = ("truncate", "drip", "redirect_loop", "redirect_file", "bad_encoding")
CONTROL_PREFIX = "/_simulator/"
CONTROL_HELP = {
    "GET /_simulator/calls": "every API call answered so far: method, path, status, request_id, body, billed_ticks",
    "GET /_simulator/billing": "requests_billed, images_billed, cost_in_usd_ticks, cost_usd",
    "POST /_simulator/latency": '{"seconds": 2.5}: every generation takes this long',
    "POST /_simulator/rate_limit": '{"per_second": 4}: 429 past 4 starts in a second, as xAI; null: off',
    "POST /_simulator/fail": '{"status": 503, "times": 2, "retry_after": 1, "prompt_contains": "owl"}',
    "POST /_simulator/drop_connections": '{"times": 1}',
    "POST /_simulator/moderate": '{"keep": 0, "times": 1, "prompt_contains": "edgy"}',
    "POST /_simulator/slow_down": '{"seconds": 5, "times": 1}',
    "POST /_simulator/fail_downloads": '{"status": 503, "times": 1}',
    "POST /_simulator/expire_urls": "{}",
    "POST /_simulator/reset": "{}: forget faults and the call log",
}


@dataclass
class RecordedCall:
    """One request the simulator answered (``status`` None: the connection was dropped on purpose)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int | None
    started: float
    finished: float
    request_id: str | None = None

    @property
    def prompt(self) -> str | None:
        return self.body.get("prompt") if isinstance(self.body, dict) else None

    @property
    def billed_ticks(self) -> int:
        """What the simulated gateway charged: every image asked for in an answered generation."""
        if self.status != 200 or not isinstance(self.body, dict):
            return 0
        n = self.body.get("n", 1)
        if not isinstance(n, int):
            return 0
        if self.path.endswith("/images/edits"):  # billed for input and output images
            return TICKS_PER_IMAGE * (n + len(self.body.get("images") or [self.body.get("image")]))
        return TICKS_PER_IMAGE * n if self.path.endswith("/images/generations") else 0

    def to_json(self) -> dict[str, Any]:
        """The call as the control API shows it (no Authorization header)."""
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "request_id": self.request_id,
            "prompt": self.prompt,
            "body": self.body if isinstance(self.body, dict) else None,
            "started": self.started,
            "finished": self.finished,
            "billed_ticks": self.billed_ticks,
        }


@dataclass
class _Fault:
    kind: str  # error | drop | moderate | delay
    remaining: int | None  # None: forever
    prompt_contains: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def matches(self, prompt: str) -> bool:
        return (self.remaining is None or self.remaining > 0) and (
            self.prompt_contains is None or self.prompt_contains in prompt
        )


class GrokSimulator:
    """
    Local Grok Imagine gateway on two loopback ports (API and image host). Use as a context manager.

    :param dialect: ``xai`` (xAI and gateway 000) or ``openai`` (gateway 003).
    :param api_key: the bearer key the simulator accepts.
    :param latency: seconds each generation takes.
    :param max_concurrent: generations in flight at once; beyond it the simulator answers 429.
    :param rate_limit: generations started per second (any 1-second window); beyond it the simulator answers
        429 with ``Retry-After: 1``, as xAI does past its per-model limit. Not billed.
    :param image_format: ``jpeg`` or ``png``.
    :param b64_prefix: send ``b64_json`` with a ``data:image/...;base64,`` prefix.
    :param models_endpoint: serve ``GET /v1/models`` (False: 404, like gateways without it).
    """

    def __init__(
        self,
        *,
        dialect: Dialect = "xai",
        api_key: str = DEFAULT_API_KEY,
        latency: float = 0.0,
        max_concurrent: int | None = None,
        rate_limit: float | None = None,
        image_format: str = "jpeg",
        b64_prefix: bool = False,
        models_endpoint: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        image_port: int = 0,
    ) -> None:
        if dialect not in MODELS:
            raise ValueError(f"dialect must be 'xai' or 'openai', not {dialect!r}")
        if image_format not in FORMATS:
            raise ValueError(f"image_format must be one of {', '.join(FORMATS)}, not {image_format!r}")
        self.dialect = dialect
        self.api_key = api_key
        self.latency = latency
        self.max_concurrent = max_concurrent
        self.rate_limit = rate_limit
        self._admitted: collections.deque[float] = collections.deque()  # starts within the last second
        self.image_format = image_format
        self.b64_prefix = b64_prefix
        self.models_endpoint = models_endpoint
        self.calls: list[RecordedCall] = []
        self.image_requests: list[RecordedCall] = []
        self.peak_concurrency = 0
        self._bind = (host, port, image_port)
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._download_faults: list[_Fault] = []
        # token -> what to serve: a render key (width, height, format, label, look) or an edit's bytes
        self._issued: dict[str, tuple[int, int, str, str, int] | bytes] = {}
        self.edits: list[dict[str, Any]] = []  # what each edit received: prompt, sources (sha256, size)
        self._in_flight = 0
        self._ids = itertools.count(1)
        # Per-prompt call counters make image bytes depend only on (prompt, call, image), not on request
        # ids or arrival order: two runs of the same work get byte-identical images, each still unique.
        self._prompt_calls: dict[str, int] = {}
        self._servers: list[_SimulatorServer] = []
        self._urls: tuple[str, ...] = ()  # kept after stop() so late handler threads can still answer

    # --- lifecycle ---

    def start(self) -> GrokSimulator:
        host, port, image_port = self._bind
        self._servers = [_SimulatorServer(self, "api", host, port), _SimulatorServer(self, "images", host, image_port)]
        self._urls = tuple(f"http://{host}:{server.server_port}" for server in self._servers)
        for server in self._servers:
            threading.Thread(
                target=server.serve_forever, args=(0.05,), name=f"grok-sim-{server.role}", daemon=True
            ).start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def __enter__(self) -> GrokSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The API origin, e.g. ``http://127.0.0.1:54321`` (append ``/v1`` for OpenAI-SDK style)."""
        return self._urls[0]

    @property
    def image_base_url(self) -> str:
        return self._urls[1]

    def connection_json(self, *, base_suffix: str = "", api_key: str | None = None, **extra: Any) -> str:
        """A ``grok`` connection in Airflow's JSON form, for ``AIRFLOW_CONN_<ID>``."""
        conn: dict[str, Any] = {
            "conn_type": "grok",
            "host": self.base_url + base_suffix,
            "password": self.api_key if api_key is None else api_key,
        }
        if extra:
            conn["extra"] = extra
        return json.dumps(conn)

    # --- fault injection ---

    def fail(
        self,
        status: int,
        *,
        times: int | None = 1,
        message: str | None = None,
        body_style: Literal["json", "html", "text"] = "json",
        retry_after: str | float | None = None,
        retry_after_ms: int | None = None,
        prompt_contains: str | None = None,
    ) -> None:
        """Answer the next ``times`` generations (None: all) with ``status`` and a dialect-style error body."""
        self._add(
            self._faults,
            "error",
            times,
            prompt_contains,
            status=status,
            message=message,
            body_style=body_style,
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
        )

    def drop_connections(self, *, times: int | None = 1, prompt_contains: str | None = None) -> None:
        """Read the request, then close the socket without answering."""
        self._add(self._faults, "drop", times, prompt_contains)

    def moderate(self, *, keep: int = 0, times: int | None = None, prompt_contains: str | None = None) -> None:
        """Answer 200 with only ``keep`` images (content moderation); usage still bills all of ``n``."""
        self._add(self._faults, "moderate", times, prompt_contains, keep=keep)

    def slow_down(self, seconds: float, *, times: int | None = None, prompt_contains: str | None = None) -> None:
        """Add ``seconds`` of latency to matching generations."""
        self._add(self._faults, "delay", times, prompt_contains, seconds=seconds)

    def misbehave(self, kind: str, *, times: int | None = 1, prompt_contains: str | None = None, **params: Any) -> None:
        """
        A hostile gateway, for the next ``times`` generations: ``drip`` (a 200 whose body arrives a byte every
        ``interval`` seconds), ``echo_key`` (a 200 that is no generation answer and echoes the Authorization
        header, also as the request id), ``extra_images`` (``extra`` more images than asked),
        ``placeholders`` (the last ``count`` items are moderated placeholders, ``respect_moderation: false``),
        ``no_image`` (items with neither url nor b64_json), ``redirect`` (a 307 to ``location``).
        """
        if kind not in API_MISBEHAVIOURS:
            raise ValueError(f"kind must be one of {', '.join(API_MISBEHAVIOURS)}, not {kind!r}")
        self._add(self._faults, kind, times, prompt_contains, **params)

    def misbehave_downloads(self, kind: str, *, times: int | None = 1, **params: Any) -> None:
        """
        A hostile image host, for the next ``times`` downloads: ``truncate`` (the body stops short of its
        Content-Length), ``drip`` (a byte every ``interval`` seconds), ``redirect_loop``, ``redirect_file``
        (a redirect to ``file:///etc/passwd``), ``bad_encoding`` (``Content-Encoding: gzip`` over garbage).
        """
        if kind not in DOWNLOAD_MISBEHAVIOURS:
            raise ValueError(f"kind must be one of {', '.join(DOWNLOAD_MISBEHAVIOURS)}, not {kind!r}")
        self._add(self._download_faults, kind, times, None, **params)

    def fail_downloads(self, status: int, *, times: int | None = 1) -> None:
        """The image host answers ``status`` to the next ``times`` downloads."""
        self._add(self._download_faults, "error", times, None, status=status)

    def serve_non_images(self, *, times: int | None = 1) -> None:
        """The image host answers 200 with an HTML page instead of an image."""
        self._add(self._download_faults, "non_image", times, None)

    def expire_urls(self) -> None:
        """Every URL issued so far now answers 403, as an expired temporary URL does."""
        with self._lock:
            self._issued.clear()

    def reset(self) -> None:
        """Forget faults, logs and per-prompt counters (keeps the ports and issued URLs)."""
        with self._lock:
            self._faults.clear()
            self._download_faults.clear()
            self.calls.clear()
            self.image_requests.clear()
            self.peak_concurrency = 0
            self._prompt_calls.clear()

    @property
    def in_flight(self) -> int:
        """Generations being answered right now."""
        with self._lock:
            return self._in_flight

    @property
    def generation_calls(self) -> list[RecordedCall]:
        return [c for c in self.calls if c.method == "POST" and c.path.endswith("/images/generations")]

    def billing(self) -> dict[str, Any]:
        """What the simulated gateway billed so far: answered generations and their cost."""
        with self._lock:
            billed = [c for c in self.calls if c.billed_ticks]
        ticks = sum(c.billed_ticks for c in billed)
        return {
            "requests_billed": len(billed),
            "images_billed": ticks // TICKS_PER_IMAGE,
            "cost_in_usd_ticks": ticks,
            "cost_usd": ticks / protocol.USD_TICKS,
        }

    # --- control over HTTP (for other processes: `python -m airflow_provider_grok.testing`) ---

    def control(self, method: str, action: str, args: dict[str, Any]) -> tuple[int, Any]:
        """Answer ``{method} /_simulator/{action}``; see :data:`CONTROL_HELP`."""
        faults: dict[str, Callable[..., None]] = {
            "fail": self.fail,
            "drop_connections": self.drop_connections,
            "moderate": self.moderate,
            "slow_down": self.slow_down,
            "fail_downloads": self.fail_downloads,
            "serve_non_images": self.serve_non_images,
            "misbehave": self.misbehave,
            "misbehave_downloads": self.misbehave_downloads,
        }
        if method == "GET" and action == "calls":
            with self._lock:
                return 200, [c.to_json() for c in self.calls]
        if method == "GET" and action == "billing":
            return 200, self.billing()
        if method == "POST" and action in faults:
            try:
                faults[action](**args)
            except (TypeError, ValueError) as err:
                return 400, {"error": f"{action}: {err}"}
            return 200, {"ok": True}
        if method == "POST" and action == "latency":
            seconds = args.get("seconds")
            if not isinstance(seconds, int | float) or seconds < 0:
                return 400, {"error": 'latency: give {"seconds": <number >= 0>}'}
            self.latency = float(seconds)
            return 200, {"ok": True}
        if method == "POST" and action == "rate_limit":
            per_second = args.get("per_second")
            if per_second is not None and (not isinstance(per_second, int | float) or per_second <= 0):
                return 400, {"error": 'rate_limit: give {"per_second": <number > 0>} or {"per_second": null}'}
            self.rate_limit = per_second
            return 200, {"ok": True}
        if method == "POST" and action in ("reset", "expire_urls"):
            getattr(self, action)()
            return 200, {"ok": True}
        return 404, {"error": f"unknown control {method} /_simulator/{action}", "help": CONTROL_HELP}

    def over_rate_limit(self, started: float) -> bool:
        """Whether a generation starting at ``started`` (monotonic) is past ``rate_limit``; else count it."""
        with self._lock:
            if self.rate_limit is None:
                return False
            while self._admitted and self._admitted[0] <= started - 1.0:
                self._admitted.popleft()
            if len(self._admitted) >= self.rate_limit:
                return True
            self._admitted.append(started)
            return False

    def _add(self, faults: list[_Fault], kind: str, times: int | None, prompt: str | None, **params: Any) -> None:
        with self._lock:
            faults.append(_Fault(kind, times, prompt, params))

    def _take_fault(self, faults: list[_Fault], prompt: str, kinds: frozenset[str] | None = None) -> _Fault | None:
        """Consume the first matching fault of ``kinds`` (latency faults combine with the others)."""
        with self._lock:
            for fault in faults:
                if (kinds is None or fault.kind in kinds) and fault.matches(prompt):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    # --- API behaviour ---

    def error_body(self, status: int, message: str, param: str | None = None) -> dict[str, Any]:
        if self.dialect == "xai":
            return {"code": "Client specified an invalid argument" if status == 400 else str(status), "error": message}
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": param, "code": None}}

    def check_key(self, headers: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
        sent = protocol.header(headers, "authorization") or ""
        if sent == f"Bearer {self.api_key}":
            return None
        shown = sent.removeprefix("Bearer ")
        shown = f"{shown[:2]}***{shown[-2:]}" if len(shown) > 4 else "***"
        if self.dialect == "xai":  # xAI answers 400, not 401, for a wrong key
            return 400, self.error_body(400, f"Incorrect API key provided: {shown}. Obtain one at console.x.ai.")
        return 401, self.error_body(401, f"Incorrect API key provided: {shown}.")

    def validate(self, body: Any) -> tuple[int, dict[str, Any]] | None:
        if not isinstance(body, dict):
            return 400, self.error_body(400, "Request body must be a JSON object.")
        unknown = sorted(set(body) - CORE - DIALECT_FIELDS[self.dialect])
        if unknown:
            if self.dialect == "xai":
                return 400, self.error_body(400, f"Argument not supported: {unknown[0]}")
            return 400, self.error_body(400, f"Unknown parameter: '{unknown[0]}'.", unknown[0])
        if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            return 400, self.error_body(400, "prompt is required", "prompt")
        if body.get("model") not in MODELS[self.dialect]:
            return 404, self.error_body(404, f"The model {body.get('model')!r} does not exist.", "model")
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= protocol.MAX_IMAGES_PER_REQUEST:
            return 400, self.error_body(400, f"n must be between 1 and 10, got {n!r}", "n")
        checks = {
            "response_format": protocol.RESPONSE_FORMATS,
            "aspect_ratio": protocol.ASPECT_RATIOS,
            "resolution": protocol.RESOLUTIONS,
            "size": protocol.SIZES,
            "quality": ("low", "medium", "auto") if self.dialect == "xai" else ("standard", "hd"),
        }
        for name, allowed in checks.items():
            if name in body and body[name] not in allowed:
                return 400, self.error_body(400, f"Invalid value for {name}: {body[name]!r}", name)
        return None

    def generate(self, body: dict[str, Any], request_id: str, keep: int | None) -> dict[str, Any]:
        n = body.get("n", 1)
        width, height = image_dimensions(body.get("aspect_ratio"), body.get("resolution"), body.get("size"))
        mime = FORMATS[self.image_format]
        digest = hashlib.sha256(body["prompt"].encode()).hexdigest()[:12]
        look = int(digest, 16) % len(PALETTE)  # the cache key: one encode per look and shape
        with self._lock:
            call = self._prompt_calls.get(digest, 0)
            self._prompt_calls[digest] = call + 1
        items = []
        for i in range(n if keep is None else min(keep, n)):
            label = f"grok-simulator prompt {digest} call {call} image {i}"
            item: dict[str, Any] = {}
            if body.get("response_format", "url") == "b64_json":
                encoded = base64.b64encode(unique_image(width, height, self.image_format, label, look)).decode()
                item["b64_json"] = f"data:{mime};base64,{encoded}" if self.b64_prefix else encoded
            else:
                token = hashlib.sha256(f"{label} {time.time_ns()}".encode()).hexdigest()[:24]
                with self._lock:
                    self._issued[token] = (width, height, self.image_format, label, look)
                ext = "jpg" if self.image_format == "jpeg" else "png"
                item["url"] = f"{self.image_base_url}/images/{token}.{ext}"
            if self.dialect == "openai":
                item["revised_prompt"] = f"A detailed, vivid rendering of: {body['prompt']}"
            else:
                item["mime_type"] = mime
            items.append(item)
        payload: dict[str, Any] = {"created": int(time.time()), "data": items}
        if self.dialect == "xai":
            payload["usage"] = {"cost_in_usd_ticks": TICKS_PER_IMAGE * n}  # moderation is still billed
        return payload

    def edit(self, body: dict[str, Any], request_id: str, sources: list[bytes]) -> dict[str, Any]:
        """An edit's answer: the first source re-tinted per output, billed for inputs and outputs."""
        from airflow_provider_grok.testing.edits import describe, retint

        with self._lock:
            self.edits.append({"request_id": request_id, "prompt": body["prompt"], "sources": describe(sources)})
        look = int(hashlib.sha256(body["prompt"].encode()).hexdigest()[:4], 16)  # another prompt, another tint
        items = [self._item(body, retint(sources[0], look + i, self.image_format)) for i in range(body.get("n", 1))]
        payload: dict[str, Any] = {"created": int(time.time()), "data": items}
        if self.dialect == "xai":
            payload["usage"] = {"cost_in_usd_ticks": TICKS_PER_IMAGE * (len(items) + len(sources))}
        return payload

    def _item(self, body: dict[str, Any], data: bytes) -> dict[str, Any]:
        mime = FORMATS[self.image_format]
        if body.get("response_format", "url") == "b64_json":
            return {"b64_json": base64.b64encode(data).decode(), "mime_type": mime}
        token = hashlib.sha256(data + str(time.time_ns()).encode()).hexdigest()[:24]
        with self._lock:
            self._issued[token] = data
        ext = "jpg" if self.image_format == "jpeg" else "png"
        return {"url": f"{self.image_base_url}/images/{token}.{ext}", "mime_type": mime}

    def issued_image(self, token: str) -> tuple[int, int, str, str, int] | bytes | None:
        with self._lock:
            return self._issued.get(token)


class _SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the listen backlog: a client may open up to 64 connections at once

    def __init__(self, sim: GrokSimulator, role: str, host: str, port: int) -> None:
        super().__init__((host, port), _Handler)
        self.sim = sim
        self.role = role  # "api" or "images"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (a deadline, a killed task) is routine here, not a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so pooled clients reuse connections
    server_version = "GrokSimulator/1.0"

    server: _SimulatorServer

    @property
    def sim(self) -> GrokSimulator:
        return self.server.sim

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the call log replaces access logs

    def do_GET(self) -> None:
        if self.server.role == "images":
            self._serve_image()
        else:
            self._api("GET")

    def do_POST(self) -> None:
        self._api("POST")

    # --- API origin ---

    def _api(self, method: str) -> None:
        started = time.monotonic()
        headers = dict(self.headers.items())
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        request_id = f"sim-{next(self.sim._ids)}"
        self._record = RecordedCall(method, self.path, headers, body, None, started, started, request_id)
        self._log = self.sim.calls
        self._answer_api(method, body, headers, request_id)

    def _answer_api(self, method: str, body: Any, headers: dict[str, str], request_id: str) -> int | None:
        sim = self.sim
        path = self.path.split("?")[0]
        if path.startswith(CONTROL_PREFIX):
            self._log = []  # control calls stay out of the call log
            status, payload = sim.control(method, path.removeprefix(CONTROL_PREFIX), body or {})
            return self._json(status, payload)
        if method == "GET" and path == "/v1/models" and sim.models_endpoint:
            if refusal := sim.check_key(headers):
                return self._json(*refusal, request_id=request_id)
            models = [{"id": m, "object": "model", "owned_by": "xai"} for m in MODELS[sim.dialect]]
            return self._json(200, {"object": "list", "data": models}, request_id=request_id)
        if method == "POST" and path == "/v1/images/edits":
            return self._edit(body, headers, request_id)
        if method != "POST" or path != "/v1/images/generations":
            return self._json(404, sim.error_body(404, f"No route for {method} {path}"), request_id=request_id)
        if refusal := sim.check_key(headers) or sim.validate(body):
            return self._json(*refusal, request_id=request_id)
        if sim.over_rate_limit(self._record.started):
            message = f"Rate limit exceeded: at most {sim.rate_limit:g} requests per second for this model."
            return self._json(429, sim.error_body(429, message), request_id=request_id, extra={"Retry-After": "1"})
        with sim._lock:
            if sim.max_concurrent is not None and sim._in_flight >= sim.max_concurrent:
                over_cap = True
            else:
                over_cap = False
                sim._in_flight += 1
                sim.peak_concurrency = max(sim.peak_concurrency, sim._in_flight)
        if over_cap:
            message = f"Too many concurrent requests (limit {sim.max_concurrent})."
            return self._json(429, sim.error_body(429, message), request_id=request_id, extra={"Retry-After": "1"})
        try:
            return self._generate(body, request_id)
        finally:
            with sim._lock:
                sim._in_flight -= 1

    def _edit(self, body: Any, headers: dict[str, str], request_id: str) -> int:
        from airflow_provider_grok.testing.edits import EditRefused, read_sources

        sim = self.sim
        if refusal := sim.check_key(headers):
            return self._json(*refusal, request_id=request_id)
        if sim.dialect == "openai":  # OpenAI-style gateways take multipart edits, not xAI's JSON
            message = "Unsupported Media Type: image edits expect multipart/form-data."
            return self._json(415, sim.error_body(415, message), request_id=request_id)
        if not isinstance(body, dict):
            return self._json(400, sim.error_body(400, "Request body must be a JSON object."), request_id=request_id)
        plain = {k: v for k, v in body.items() if k not in ("image", "images")}
        if refusal := sim.validate(plain):
            return self._json(*refusal, request_id=request_id)
        try:
            sources = read_sources(body)
        except EditRefused as err:
            return self._json(400, sim.error_body(400, str(err)), request_id=request_id)
        if sim.latency:
            time.sleep(sim.latency)
        return self._json(200, sim.edit(body, request_id, sources), request_id=request_id)

    def _generate(self, body: dict[str, Any], request_id: str) -> int | None:
        sim = self.sim
        slow = sim._take_fault(sim._faults, body["prompt"], frozenset({"delay"}))
        fault = sim._take_fault(
            sim._faults, body["prompt"], frozenset({"error", "drop", "moderate", *API_MISBEHAVIOURS})
        )
        delay = sim.latency + (slow.params["seconds"] if slow else 0)
        if delay:
            time.sleep(delay)
        if fault and fault.kind == "drop":
            self._commit_record(None)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault and fault.kind == "error":
            return self._injected_error(fault.params, request_id)
        if fault and fault.kind in API_MISBEHAVIOURS:
            return self._misbehave(fault, body, request_id)
        keep = fault.params["keep"] if fault and fault.kind == "moderate" else None
        return self._json(200, sim.generate(body, request_id, keep), request_id=request_id)

    def _misbehave(self, fault: _Fault, body: dict[str, Any], request_id: str) -> int:
        sim, kind = self.sim, fault.kind
        if kind == "echo_key":
            echoed = self.headers.get("Authorization", "")
            return self._json(200, {"echo": echoed}, request_id=echoed)
        if kind == "redirect":
            return self._send(307, b"", "text/plain", extra={"Location": fault.params["location"]})
        payload = sim.generate({**body, "n": body.get("n", 1) + fault.params.get("extra", 0)}, request_id, None)
        if kind == "placeholders":
            for item in payload["data"][-fault.params.get("count", 1) :]:
                item["respect_moderation"] = False
        if kind == "no_image":
            payload["data"] = [{"revised_prompt": "no image here"} for _ in payload["data"]]
        if kind == "drip":
            return self._drip(json.dumps(payload).encode(), "application/json", fault.params.get("interval", 0.5))
        return self._json(200, payload, request_id=request_id)

    def _drip(self, body: bytes, content_type: str, interval: float) -> int:
        """Headers at once, then the body a byte at a time: no single read ever times out."""
        self._commit_record(200)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(interval)
        self.close_connection = True
        return 200

    def _injected_error(self, params: dict[str, Any], request_id: str) -> int:
        status = params["status"]
        message = params["message"] or {
            429: "Rate limit exceeded. Please slow down.",
            400: "Generated image rejected by content moderation.",
        }.get(status, f"Upstream service failed (simulated {status}).")
        extra = {}
        if params["retry_after"] is not None:
            extra["Retry-After"] = str(params["retry_after"])
        if params["retry_after_ms"] is not None:
            extra["retry-after-ms"] = str(params["retry_after_ms"])
        style = params["body_style"]
        if style == "html":
            page = f"<html><head><title>{status} Bad Gateway</title></head><body><h1>{message}</h1></body></html>"
            return self._send(status, page.encode(), "text/html", request_id=request_id, extra=extra)
        if style == "text":
            return self._send(status, message.encode(), "text/plain", request_id=request_id, extra=extra)
        return self._json(status, self.sim.error_body(status, message), request_id=request_id, extra=extra)

    # --- image origin ---

    def _serve_image(self) -> None:
        started = time.monotonic()
        self._record = RecordedCall("GET", self.path, dict(self.headers.items()), None, None, started, started)
        self._log = self.sim.image_requests
        self._answer_image()

    def _answer_image(self) -> int:
        sim = self.sim
        token = self.path.rsplit("/", 1)[-1].split(".")[0]
        fault = sim._take_fault(sim._download_faults, "")
        if fault and fault.kind == "error":
            return self._send(fault.params["status"], b"simulated image host fault", "text/plain")
        if fault and fault.kind == "non_image":
            return self._send(200, b"<html><body>Not an image</body></html>", "text/html")
        if fault and fault.kind == "redirect_loop":
            return self._send(302, b"", "text/plain", extra={"Location": self.path})
        if fault and fault.kind == "redirect_file":
            return self._send(302, b"", "text/plain", extra={"Location": "file:///etc/passwd"})
        if fault and fault.kind == "bad_encoding":
            return self._send(200, b"this is not gzip at all", "image/jpeg", extra={"Content-Encoding": "gzip"})
        issued = sim.issued_image(token)
        if issued is None:
            expired = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
            return self._send(403, expired, "application/xml")
        if isinstance(issued, bytes):
            data, fmt = issued, sim.image_format
        else:
            width, height, fmt, label, look = issued
            data = unique_image(width, height, fmt, label, look)
        if fault and fault.kind == "drip":
            return self._drip(data, FORMATS[fmt], fault.params.get("interval", 0.5))
        if fault and fault.kind == "truncate":
            self._commit_record(200)
            self.send_response(200)
            self.send_header("Content-Type", FORMATS[fmt])
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return 200
        return self._send(200, data, FORMATS[fmt])

    # --- writing ---

    def _commit_record(self, status: int | None) -> None:
        """Log the call before answering, so a client that has its answer always finds it in the log."""
        self._record.status = status
        self._record.finished = time.monotonic()
        self._log.append(self._record)

    def _json(
        self, status: int, payload: Any, *, request_id: str | None = None, extra: dict[str, str] | None = None
    ) -> int:
        return self._send(status, json.dumps(payload).encode(), "application/json", request_id=request_id, extra=extra)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        request_id: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> int:
        self._commit_record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if request_id:
            self.send_header("x-request-id", request_id)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up: nothing to do
            self.wfile.write(body)
        return status
