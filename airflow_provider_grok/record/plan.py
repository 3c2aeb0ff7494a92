"""
Jobs (requests still to send) and a deferred batch's *plan*: the jobs a trigger is to send and the money
cap as the worker folded it, written to storage before the task defers (:func:`plan_document`). The
trigger's kwargs then name one key whatever the batch size, and a restarted trigger reads the same plan
and sends only what :func:`still_to_send` says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from airflow_provider_grok.protocol import EditParams, GenerationParams
from airflow_provider_grok.record.cap import CostCap
from airflow_provider_grok.record.keys import planned_id, resent_id
from airflow_provider_grok.record.lifecycle import SENT, RequestState
from airflow_provider_grok.record.records import RequestRecord

Params = GenerationParams | EditParams


@dataclass(frozen=True)
class Job:
    """A request still to send: ``count`` (<= 10) images of one prompt, from ``first_image_index``."""

    id: str
    prompt_index: int
    first_image_index: int
    count: int
    fingerprint: str

    def record(self, try_number: int) -> RequestRecord:
        """Its record in its first state, ``sent``: the receipt written before the request goes out."""
        return RequestRecord(
            id=self.id,
            try_number=try_number,
            prompt_index=self.prompt_index,
            first_image_index=self.first_image_index,
            count=self.count,
            fingerprint=self.fingerprint,
        )


# --- a deferred batch: its plan, and what a restarted trigger still sends ---


def plan_document(jobs: Iterable[tuple[Job, Params]], cap: CostCap | None = None) -> dict[str, Any]:
    """The requests a trigger is to send and the money cap as the worker folded it."""
    return {
        "jobs": [{**asdict(job), "params": asdict(params)} for job, params in jobs],
        "cap": (cap or CostCap(None)).to_json(),
    }


def read_plan_document(plan: Mapping[str, Any]) -> tuple[list[tuple[Job, Params]], CostCap]:
    return [_job_from_json(data) for data in plan["jobs"]], CostCap.from_json(plan.get("cap"))


def _job_from_json(data: Mapping[str, Any]) -> tuple[Job, Params]:
    """A job and its parameters (a generation's, or an edit's: those have sources)."""
    job = Job(
        str(data["id"]), int(data["prompt_index"]), int(data["first_image_index"]), int(data["count"]),
        str(data["fingerprint"]),
    )  # fmt: skip
    stored = dict(data["params"])
    if "sources" in stored:
        stored["sources"] = tuple(stored["sources"])
        return job, replace(EditParams(**stored), n=job.count)
    return job, replace(GenerationParams(**stored), n=job.count)


def receipts_of_plan(plan: Sequence[tuple[Job, Params]], receipts: Iterable[Mapping[str, Any]]) -> list[RequestRecord]:
    """The receipts a previous run of this plan's trigger left (a restart), re-sent requests included."""
    ours = {job.id for job, _ in plan}
    return [RequestRecord.from_json(r) for r in receipts if planned_id(str(r.get("id"))) in ours]


def still_to_send(
    plan: Sequence[tuple[Job, Params]], receipts: Iterable[Mapping[str, Any]]
) -> list[tuple[Job, Params]]:
    """
    The jobs a (restarted) trigger still sends. A job with a receipt past ``sent`` is done. A job whose
    receipts all say ``sent`` was in flight when the triggerer stopped: it is sent again under a new id
    (``-r1``...), so the first request stays on record as unanswered and may-have-been-billed.
    """
    states: dict[str, list[RequestState]] = {}
    for receipt in receipts:
        states.setdefault(planned_id(str(receipt.get("id"))), []).append(RequestState.read(receipt.get("state")))
    todo = []
    for job, params in plan:
        seen = states.get(job.id, [])
        if any(state != SENT for state in seen):
            continue
        todo.append((replace(job, id=resent_id(job.id, len(seen))) if seen else job, params))
    return todo
