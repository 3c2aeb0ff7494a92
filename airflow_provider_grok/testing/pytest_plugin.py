"""pytest fixtures for the Grok simulator.

Enable in a ``conftest.py`` with ``pytest_plugins = ["airflow_provider_grok.testing.pytest_plugin"]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_grok.testing.simulator import GrokSimulator


@pytest.fixture
def grok_simulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[GrokSimulator]:
    """A started xAI-dialect simulator, with ``AIRFLOW_CONN_GROK_DEFAULT`` pointing at it."""
    with GrokSimulator() as sim:
        monkeypatch.setenv("AIRFLOW_CONN_GROK_DEFAULT", sim.connection_json())
        yield sim
