"""A local Grok Imagine gateway simulator for tests, demos and users' own DAG tests.

Needs Pillow (``pip install 'airflow-provider-grok[simulator]'``). Use :class:`GrokSimulator` as a
context manager, the ``grok_simulator`` pytest fixture (add
``pytest_plugins = ["airflow_provider_grok.testing.pytest_plugin"]`` to your ``conftest.py``), or
run ``python -m airflow_provider_grok.testing`` from a shell and drive it from another process with
:class:`SimulatorControl` (its HTTP control API under ``/_simulator/``).
"""

from __future__ import annotations

from airflow_provider_grok.testing.control import SimulatorControl, busiest_second
from airflow_provider_grok.testing.s3_faults import S3FaultProxy
from airflow_provider_grok.testing.simulator import DEFAULT_API_KEY, GrokSimulator, RecordedCall

__all__ = ["DEFAULT_API_KEY", "GrokSimulator", "RecordedCall", "S3FaultProxy", "SimulatorControl", "busiest_second"]
