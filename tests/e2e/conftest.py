"""One deployment for the whole end-to-end session (starting it takes about a minute)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.deployment import Deployment


@pytest.fixture(scope="session")
def deployment() -> Iterator[Deployment]:
    deployment = Deployment()
    try:
        yield deployment.start()
    except BaseException:
        for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
            print(f"--- last lines of {name} ---\n{deployment.log_tail(name)}")
        raise
    finally:
        deployment.stop()
