"""
A fault-injecting HTTP proxy for S3 (moto, MinIO, ...) on loopback: point the AWS connection's
``endpoint_url`` at it and boto3 goes through it to the real server, unless a fault says otherwise.

    with S3FaultProxy("http://127.0.0.1:5000") as proxy:
        proxy.throttle(times=2)          # the next 2 writes answer 503 SlowDown (botocore retries them)
        proxy.deny_writes()              # every write answers 403 AccessDenied (expired keys, a policy change)
        proxy.go_away()                  # every request is dropped without an answer (the endpoint is gone)
        proxy.heal()                     # back to forwarding everything

Faults apply to writes (PUT, POST, DELETE) unless ``reads=True``. ``proxy.refused`` counts what it refused.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

WRITES = frozenset({"PUT", "POST", "DELETE"})
_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>s3-fault-proxy</RequestId></Error>"
)


class S3FaultProxy:
    """:param upstream: the real S3 endpoint, e.g. ``http://127.0.0.1:5000``."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._bind = (host, port)
        self._lock = threading.Lock()
        self._mode: str | None = None  # None: forward; "throttle", "deny" or "gone"
        self._denied_keys: re.Pattern[str] | None = None  # writes to matching paths are always refused
        self._remaining: int | None = None
        self._reads = False
        self.refused = 0
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle ---

    def start(self) -> S3FaultProxy:
        self._server = _ProxyServer(self, self._bind)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="s3-fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://{self._bind[0]}:{self._server.server_port}"

    # --- faults ---

    def throttle(self, *, times: int | None = 1, reads: bool = False) -> None:
        """Answer 503 SlowDown, as S3 does under load."""
        self._set("throttle", times, reads)

    def deny_writes(self, *, times: int | None = None) -> None:
        """Answer 403 AccessDenied to writes, as S3 does once keys expire or a bucket policy changes."""
        self._set("deny", times, False)

    def deny_writes_to(self, pattern: str) -> None:
        """Answer 403 AccessDenied to every write whose path matches the regex ``pattern`` (a key's own policy)."""
        with self._lock:
            self._denied_keys = re.compile(pattern)

    def go_away(self, *, reads: bool = True) -> None:
        """Drop every connection without an answer, as an endpoint that disappeared."""
        self._set("gone", None, reads)

    def heal(self) -> None:
        self._set(None, None, False)

    def _set(self, mode: str | None, times: int | None, reads: bool) -> None:
        with self._lock:
            self._mode, self._remaining, self._reads = mode, times, reads

    def take_fault(self, method: str, path: str = "") -> str | None:
        """The fault this request meets, if any (counting it)."""
        with self._lock:
            if method in WRITES and self._denied_keys is not None and self._denied_keys.search(path):
                self.refused += 1
                return "deny"
            if self._mode is None or (method not in WRITES and not self._reads):
                return None
            mode = self._mode
            if self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._mode = None
            self.refused += 1
            return mode


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: S3FaultProxy, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.proxy = proxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (or a connection dropped on purpose) is routine here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _relay(self) -> None:
        body = self._body()
        fault = self.server.proxy.take_fault(self.command, self.path)
        if fault == "gone":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault in ("throttle", "deny"):
            status, code, message = (
                (503, "SlowDown", "Please reduce your request rate.")
                if fault == "throttle"
                else (403, "AccessDenied", "Access Denied")
            )
            payload = _ERROR.format(code=code, message=message).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload if self.command != "HEAD" else b"")
            return
        upstream = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            # A HEAD's length is the object's, not of its (empty) body.
            length = answer.getheader("content-length", "0") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay
