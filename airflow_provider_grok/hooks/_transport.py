"""
Moving bytes for the protocol's state machine: one attempt of a :class:`~airflow_provider_grok.protocol.Send`
over ``requests`` or ``httpx``, within its time limit and size cap, every library fault named as one of the
protocol's faults. When a request may start is the rate budget's (``_budget.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import httpx
import requests
import urllib3
from requests.adapters import HTTPAdapter

from airflow_provider_grok.protocol import Send
from airflow_provider_grok.protocol.machine import Fault

READ_CHUNK = 1024 * 1024
DEADLINE_MESSAGE = "the whole answer did not arrive within the connection's timeout (a limit on one attempt)"


class TransportFault(Exception):
    """No usable answer: ``kind`` is the protocol's name for what happened, ``detail`` the library's words."""

    def __init__(self, kind: Fault, detail: str) -> None:
        super().__init__(detail)
        self.kind: Fault = kind
        self.detail = detail


def _named(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def exchange(session: requests.Session, send: Send) -> tuple[int, Mapping[str, str], bytes]:
    """One attempt over ``requests``: status, headers and the whole body, or a :class:`TransportFault`."""
    deadline = time.monotonic() + send.timeout
    try:
        with session.request(
            send.method,
            send.url,
            json=send.json,
            headers=dict(send.headers),
            timeout=(send.connect_timeout, send.timeout),
            stream=True,
            allow_redirects=send.follow_redirects,
        ) as response:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > send.max_bytes:
                raise TransportFault("too_large", f"{declared} bytes announced")
            return response.status_code, response.headers, _read_within(response, deadline, send.max_bytes)
    except urllib3.exceptions.DecodeError as err:  # a corrupt Content-Encoding: the same on every attempt
        raise TransportFault("undecodable", _named(err)) from None
    except requests.exceptions.ContentDecodingError as err:
        raise TransportFault("undecodable", _named(err)) from None
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
    ) as err:  # refused, dropped, timed out or cut short: worth another attempt
        raise TransportFault("no_answer", _named(err)) from None
    except requests.RequestException as err:  # a redirect loop, a redirect to file:, an invalid URL
        raise TransportFault("refused", _named(err)) from None


def _read_within(response: requests.Response, deadline: float, limit: int) -> bytes:
    """
    Read a streamed body by the chunk as it arrives (``read1``: a slow host cannot make one read wait for a
    full chunk), refusing to go past ``deadline`` (monotonic) or ``limit`` bytes.
    """
    chunks, size = [], 0
    while chunk := response.raw.read1(READ_CHUNK, decode_content=True):
        size += len(chunk)
        if size > limit:
            raise TransportFault("too_large", f"more than {limit} bytes")
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise TransportFault("deadline", DEADLINE_MESSAGE)
    return b"".join(chunks)


async def aexchange(client: httpx.AsyncClient, send: Send) -> tuple[int, Mapping[str, str], bytes]:
    """One attempt over ``httpx``: the async twin of :func:`exchange`."""
    try:
        async with asyncio.timeout(send.timeout):
            async with client.stream(
                send.method,
                send.url,
                json=send.json,
                headers=dict(send.headers),
                follow_redirects=send.follow_redirects,
            ) as response:
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > send.max_bytes:
                        raise TransportFault("too_large", f"more than {send.max_bytes} bytes")
                    chunks.append(chunk)
                return response.status_code, response.headers, b"".join(chunks)
    except TimeoutError:
        raise TransportFault("deadline", DEADLINE_MESSAGE) from None
    except httpx.DecodingError as err:
        raise TransportFault("undecodable", _named(err)) from None
    except (httpx.TooManyRedirects, httpx.UnsupportedProtocol) as err:
        raise TransportFault("refused", _named(err)) from None
    except httpx.TransportError as err:
        raise TransportFault("no_answer", _named(err)) from None


def pooled_session(size: int) -> requests.Session:
    session = requests.Session()
    # Retries are the protocol's (billing-aware and logged), so urllib3's own are off.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
