"""One deployment per executor, each for its own test module (starting one takes about a minute)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.deployment import CELERY_WORKERS, Deployment


def _deployment(executor: str) -> Iterator[Deployment]:
    deployment = Deployment(executor)
    try:
        yield deployment.start()
    except BaseException:
        names = ["api-server", "scheduler", "dag-processor", "triggerer"]
        for name in names + (list(CELERY_WORKERS) if executor == "CeleryExecutor" else []):
            print(f"--- last lines of {name} ---\n{deployment.log_tail(name)}")
        raise
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    """LocalExecutor: tasks run under the scheduler."""
    yield from _deployment("LocalExecutor")


@pytest.fixture(scope="module")
def celery_deployment() -> Iterator[Deployment]:
    """CeleryExecutor: a Redis broker and two workers, as on separate machines."""
    yield from _deployment("CeleryExecutor")
