"""The batch driver, event by event with no I/O: admission, stops, and what every unsent prompt says."""

from __future__ import annotations

import logging

import pytest

from airflow_provider_grok.exceptions import (
    GrokAuthError,
    GrokCostCapExceededError,
    GrokServerError,
    GrokStorageError,
)
from airflow_provider_grok.protocol import GeneratedImage, GenerationParams, ImageGenerationResult
from airflow_provider_grok.record import (
    After,
    BatchDriver,
    BatchStop,
    CostCap,
    Finished,
    Job,
    Send,
    StopReason,
    Wait,
)

pytestmark = pytest.mark.sansio
LOG = logging.getLogger("test_driver")
CENT = 10**8


def jobs(count: int, images: int = 1) -> list:
    return [
        (Job(f"t1-abc123-s{i:05d}", i, 0, images, f"fp{i}"), GenerationParams(prompt=f"p{i}", model="m", n=images))
        for i in range(count)
    ]


def answer(images: int, ticks: int | None = 2 * CENT) -> ImageGenerationResult:
    usage = None if ticks is None else {"cost_in_usd_ticks": ticks * images}
    generated = [GeneratedImage(i, b64_json="x") for i in range(images)]
    return ImageGenerationResult(0, "m", generated, images, usage, ["g"], 0, 0, 0)


def send_next(driver: BatchDriver) -> Send:
    action = driver.next()
    assert isinstance(action, Send), action
    driver.sent(action.request)
    return action


def test_every_job_is_sent_once_in_order_then_the_slot_is_finished() -> None:
    driver = BatchDriver(jobs(3), CostCap(None), 1, LOG)
    ids = [send_next(driver).request.id for _ in range(3)]
    assert ids == ["t1-abc123-s00000", "t1-abc123-s00001", "t1-abc123-s00002"]
    assert driver.next() is Finished and driver.stop is None and driver.sent_count == 3 and driver.in_flight == 3


def test_a_fatal_error_stops_the_batch_and_names_itself_on_every_unsent_prompt() -> None:
    driver = BatchDriver(jobs(3), CostCap(None), 1, LOG)
    first = send_next(driver)
    assert driver.answered(first.request, GrokAuthError("bad key", status=401), "m") is After.WRITE_RECEIPT
    driver.finished(first.request)
    assert driver.next() is Finished and driver.unsent == 2
    assert driver.stop == BatchStop(StopReason.FATAL_ERROR, "GrokAuthError", "bad key", 401)
    assert "GrokAuthError" in driver.stop.unsent_reason()
    assert isinstance(driver.stop.error(), GrokAuthError)


def test_an_error_of_one_request_does_not_stop_the_others() -> None:
    driver = BatchDriver(jobs(2), CostCap(None), 1, LOG)
    first = send_next(driver)
    driver.answered(first.request, GrokServerError("boom", status=500), "m")
    assert isinstance(driver.next(), Send) and driver.stop is None


def test_a_refused_receipt_sends_nothing_more_and_frees_its_cap_reservation() -> None:
    cap = CostCap(1.0)
    cap.price_ticks = 2 * CENT
    driver = BatchDriver(jobs(3), cap, 1, LOG)
    action = driver.next()
    assert isinstance(action, Send)
    driver.receipt_refused(action.request, GrokStorageError("AccessDenied"))
    assert driver.next() is Finished and driver.sent_count == 0 and driver.in_flight == 0
    assert driver.stop is not None and driver.stop.reason is StopReason.STORAGE_REFUSED
    assert cap._worst_ticks(0) == 0  # the reservation was withdrawn


def test_the_cap_probes_alone_then_stops_before_a_request_that_could_pass_it() -> None:
    driver = BatchDriver(jobs(4), CostCap(0.05), 1, LOG)
    probe = send_next(driver)
    assert driver.next() is Wait  # the price is unknown until the probe is answered
    driver.answered(probe.request, answer(1), "m")
    driver.finished(probe.request)
    second = send_next(driver)  # $0.02 spent + $0.02 reserved: fits
    assert driver.next() is Wait  # a third could reach $0.06 while the second is in flight
    driver.answered(second.request, answer(1), "m")
    driver.finished(second.request)
    assert driver.next() is Finished and driver.unsent == 2
    assert driver.stop is not None and driver.stop.reason is StopReason.COST_CAP
    assert driver.stop.error_type == "GrokCostCapExceededError"
    assert driver.stop.unsent_reason() == "not generated: max_cost_usd stopped the batch before this request"
    assert isinstance(driver.stop.error(), GrokCostCapExceededError)


def test_an_answer_without_cost_under_a_cap_stops_the_batch_at_once() -> None:
    driver = BatchDriver(jobs(2), CostCap(1.0), 1, LOG)
    probe = send_next(driver)
    driver.answered(probe.request, answer(1, ticks=None), "m")
    assert driver.next() is Finished
    assert driver.stop is not None and "reported no cost" in driver.stop.message


def test_halt_sends_nothing_more_but_lets_requests_in_flight_finish() -> None:
    driver = BatchDriver(jobs(3), CostCap(None), 1, LOG)
    first = send_next(driver)
    driver.halt("the task was stopped (on_kill)")
    assert driver.next() is Finished
    assert driver.answered(first.request, answer(1), "m") is After.STORE
    assert driver.stop is not None and driver.stop.reason is StopReason.KILLED


def test_a_stop_survives_the_trigger_event_unchanged() -> None:
    from airflow_provider_grok.triggers.grok import GenerationEvent

    stop = BatchStop(StopReason.STORAGE_REFUSED, "GrokStorageError", "AccessDenied", 403)
    payload = GenerationEvent.stopped(stop, sent=2, skipped=1).to_payload()
    event = GenerationEvent.from_payload(payload)
    assert event.stop == stop and (event.sent, event.skipped) == (2, 1)
    assert GenerationEvent.from_payload(GenerationEvent("success").to_payload()).stop is None
