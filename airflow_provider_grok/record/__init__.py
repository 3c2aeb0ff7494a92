"""
The record of exactly once, sans-IO like ``protocol/``: no boto3, no Airflow, no HTTP library, no threads,
no clock or randomness (the executors pass them in). Read it in this order:

- ``lifecycle``: the states of one paid request, the transition table, and what a crash after each durable
  write leaves and what the next try does (the crash matrix);
- ``driver``: one batch: which request goes next, the money cap's admission, when and why the batch stops,
  the message of every prompt not sent. The worker's threads and the trigger's coroutines run its loop;
- ``task``: a task instance's record, folded from what storage holds (earlier tries, a foreign prefix
  refused, orphans adopted), and the jobs still to send;
- ``plan``: jobs, and the plan a deferred batch's trigger sends; ``keys``: where things live, request ids;
- ``records``: the records and each image's own metadata record; ``manifest``: the manifest document, its
  encoding and its reader; ``report``: the errors that end a try; ``cost`` and ``cap``: cost, the money cap.

Glossary (one word, one meaning, here and in the code):

- **request**: one paid call to the gateway (one POST, or one sub-request of n > 10); its record is a
  :class:`RequestRecord`, its *receipt* that record in storage. Its id (``keys.request_id``) is ours; the
  gateway's ids are ``request_ids`` in the record. The user's generation parameters are *parameters* (the
  manifest's ``request`` key, kept for compatibility).
- **job**: a request still to send (:class:`Job`: a prompt, the first image index, the image count).
- **batch**: the jobs one try sends, in the worker or in the trigger; the **driver** runs it.
- **plan**: the jobs a deferred batch's trigger is to send, written to storage before the task defers.
- **sender**: who sends a job (:class:`keys.Sender`: the worker, or the trigger).
- **stop**: why a batch sent nothing more (:class:`BatchStop`: the cost cap, a fatal error, storage refusing
  receipts, a kill).
- **cost cap**: ``max_cost_usd`` (:class:`CostCap`): admit a job, release it once answered. The **rate
  budget** is another thing: request starts per second, in ``hooks/``.
- **fold**: read what storage holds into the record; **decide**: give each prompt its final status.
- **try**: one Airflow try of the task instance; **execution**: one run of the operator's code (a cleared
  task may run a try number twice, and a deferred try runs twice: before and after the trigger).
"""

from __future__ import annotations

from airflow_provider_grok.record import keys, lifecycle, manifest, report
from airflow_provider_grok.record.cap import Admission, CostCap
from airflow_provider_grok.record.cost import cost_summary, describe_cost
from airflow_provider_grok.record.driver import WAIT_SECONDS, BatchDriver, BatchStop, Finished, Send, StopReason, Wait
from airflow_provider_grok.record.lifecycle import (
    ANSWERED,
    FAILED,
    FILTERED,
    SENT,
    STORED,
    After,
    IllegalTransitionError,
    RequestState,
)
from airflow_provider_grok.record.manifest import Manifest
from airflow_provider_grok.record.plan import Job
from airflow_provider_grok.record.records import PromptRecord, RequestRecord, StoredImage, TaskIdentity
from airflow_provider_grok.record.task import TaskRecord

__all__ = [
    "ANSWERED",
    "FAILED",
    "FILTERED",
    "SENT",
    "STORED",
    "WAIT_SECONDS",
    "Admission",
    "After",
    "BatchDriver",
    "BatchStop",
    "CostCap",
    "Finished",
    "IllegalTransitionError",
    "Job",
    "Manifest",
    "PromptRecord",
    "RequestRecord",
    "RequestState",
    "Send",
    "StopReason",
    "StoredImage",
    "TaskIdentity",
    "TaskRecord",
    "Wait",
    "cost_summary",
    "describe_cost",
    "keys",
    "lifecycle",
    "manifest",
    "report",
]
