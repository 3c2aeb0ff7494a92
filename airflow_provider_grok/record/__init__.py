"""
The record of exactly once, sans-IO like ``protocol/``: no boto3, no Airflow, no clock or randomness (the
drivers pass them in). Where a task instance's objects live and how request ids are spelled (``keys``); the
records and their states, with each image's own metadata record (``records``); the durable sequence of one
request and a deferred batch's plan (``sequence``); folding what S3 holds and what to send next (``task``);
the manifest document and the errors that end a try (``report``); cost (``cost``) and the money cap (``cap``).

What a retry, a restart or a foreign prefix does is read in ``task.py`` and ``sequence.py``.
"""

from __future__ import annotations

from airflow_provider_grok.record import keys, report, sequence
from airflow_provider_grok.record.cap import Admission, CostCap
from airflow_provider_grok.record.cost import cost_summary, describe_cost
from airflow_provider_grok.record.records import (
    ANSWERED,
    FAILED,
    FILTERED,
    SENT,
    STORED,
    PromptRecord,
    RequestRecord,
    StoredImage,
    TaskIdentity,
)
from airflow_provider_grok.record.sequence import Job, Next
from airflow_provider_grok.record.task import TaskRecord, current_manifest

__all__ = [
    "ANSWERED",
    "FAILED",
    "FILTERED",
    "SENT",
    "STORED",
    "Admission",
    "CostCap",
    "Job",
    "Next",
    "PromptRecord",
    "RequestRecord",
    "StoredImage",
    "TaskIdentity",
    "TaskRecord",
    "cost_summary",
    "current_manifest",
    "describe_cost",
    "keys",
    "report",
    "sequence",
]
