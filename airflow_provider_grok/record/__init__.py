"""
The record of what a task instance pays for, sans-IO like ``protocol/``: no boto3, no Airflow, no clock.

``cap`` decides whether the next request may be sent under a task's ``max_cost_usd``. (The rest of the
record, ``manifest.py`` and ``ledger.py``, is to move here as well.)
"""

from __future__ import annotations

from airflow_provider_grok.record.cap import Admission, CostCap

__all__ = ["Admission", "CostCap"]
