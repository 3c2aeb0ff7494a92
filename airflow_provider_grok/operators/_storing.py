"""
The worker's store threads: answers are fetched and uploaded while generation goes on, so a request slot
is free again as soon as its answer arrives. At most ``max_waiting`` answers wait to be stored (the request
threads block beyond that), which bounds memory; freed answer buffers go back to the OS now and then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any

STORE_WORKERS = 4  # threads fetching and uploading; uploads are short next to a generation
TRIM_EVERY = 32  # stored answers between two returns of freed memory to the OS


def _trimmer() -> Any:
    """
    glibc's ``malloc_trim``, or None elsewhere. Each answer passes through buffers of megabytes (the body,
    its base64 text, the image) freed seconds later; glibc keeps such freed pages in its per-thread arenas,
    so a 10,000-prompt task's RSS grew by ~20 KB per image with nothing alive. Trimming now and then hands
    them back (Dask's workers do the same).
    """
    import ctypes

    # The symbols already loaded into this process (libc among them): no ldconfig subprocess at import.
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


_MALLOC_TRIM = _trimmer()


class StorePool:
    """Run store steps on :data:`STORE_WORKERS` threads, at most ``max_waiting`` handed over at once."""

    def __init__(self, max_waiting: int) -> None:
        self._slots = threading.BoundedSemaphore(max_waiting)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._stored = 0

    @contextmanager
    def open(self) -> Iterator[None]:
        """The block in which :meth:`submit` works; it ends when everything handed over is stored."""
        with ThreadPoolExecutor(STORE_WORKERS, thread_name_prefix="grok-store") as pool:
            self._pool, self._futures = pool, []
            try:
                yield
            finally:
                for future in as_completed(list(self._futures)):
                    future.result()
                self._pool = None

    def submit(self, store: Callable[[], None]) -> None:
        """Hand one answer's store step over (blocks while ``max_waiting`` answers already wait)."""
        assert self._pool is not None, "submit() needs an open() block"
        self._slots.acquire()

        def run() -> None:
            try:
                store()
            finally:
                self._slots.release()
                with self._lock:
                    self._stored += 1
                    trim = self._stored % TRIM_EVERY == 0
                if trim and _MALLOC_TRIM is not None:
                    _MALLOC_TRIM(0)

        future = self._pool.submit(run)
        with self._lock:
            self._futures.append(future)
