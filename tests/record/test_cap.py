"""The money cap's rule, driven request by request with no I/O (as h11 tests its state machine)."""

from __future__ import annotations

import itertools

import pytest

from airflow_provider_grok.record import ANSWERED, FAILED, FILTERED, SENT, STORED, Admission, CostCap, RequestRecord

pytestmark = pytest.mark.sansio

CENT = 10**8  # ticks: 10^10 ticks are one dollar
_ids = itertools.count()


def request(count: int = 1, state: str = STORED, ticks: int | None = None, **fields: object) -> RequestRecord:
    usage = None if ticks is None else {"cost_in_usd_ticks": ticks}
    return RequestRecord(f"r{next(_ids)}", 1, 0, 0, count, "fp", state=state, usage=usage, returned=count, **fields)  # type: ignore[arg-type]


def test_no_cap_admits_everything() -> None:
    cap = CostCap(None)
    assert all(cap.admit(10) is Admission.SEND for _ in range(100))
    assert not cap.needs_probe
    assert cap.release(request(ticks=None)) is None  # no usage is no problem without a cap


def test_the_first_request_goes_alone_until_an_answer_tells_the_price() -> None:
    cap = CostCap(1.00)
    assert cap.needs_probe
    assert cap.admit(1) is Admission.SEND
    assert cap.admit(1) is Admission.WAIT  # the price is unknown while the probe is in flight
    cap.release(request(1, ticks=2 * CENT))
    assert not cap.needs_probe and cap.price_ticks == 2 * CENT
    assert cap.admit(10) is Admission.SEND


def test_in_flight_requests_reserve_their_worst_case_and_the_cap_is_never_passed() -> None:
    cap = CostCap(0.10)
    cap.admit(1)
    cap.release(request(1, ticks=2 * CENT))  # $0.02 spent, $0.02 an image
    admitted = [cap.admit(1) for _ in range(5)]
    assert admitted == [Admission.SEND] * 4 + [Admission.WAIT]  # 0.02 + 4 x 0.02 = 0.10
    for _ in range(4):
        cap.release(request(1, ticks=2 * CENT))
    assert cap.spent_ticks == 10 * CENT
    assert cap.admit(1) is Admission.STOP  # nothing in flight and no room: stop for good
    assert cap.admit(1) is Admission.STOP and cap.stopped
    assert "$0.1000 billed of max_cost_usd=$0.1000" in cap.describe()


def test_a_request_that_was_not_billed_frees_its_reservation() -> None:
    cap = CostCap(0.06)
    cap.admit(1)
    cap.release(request(1, ticks=2 * CENT))
    assert cap.admit(2) is Admission.SEND  # 0.02 + 0.04
    assert cap.admit(1) is Admission.WAIT
    cap.release(request(2, state=FAILED, error="HTTP 400"))  # refused: not billed
    assert cap.admit(2) is Admission.SEND


def test_a_request_that_may_have_been_billed_counts_at_the_worst_price() -> None:
    cap = CostCap(0.10)
    cap.admit(1)
    cap.release(request(1, ticks=2 * CENT))
    cap.admit(2)
    cap.release(request(2, state=FAILED, maybe_billed=True))  # a timeout: the gateway may have billed it
    assert cap.uncertain_images == 2
    assert [cap.admit(1) for _ in range(3)] == [Admission.SEND, Admission.SEND, Admission.WAIT]
    assert "+ 2 images whose requests may have been billed" in cap.describe()


def test_moderation_that_removed_everything_is_billed_at_the_worst_price() -> None:
    cap = CostCap(1.0)
    cap.admit(1)
    cap.release(request(1, ticks=2 * CENT))
    cap.admit(3)
    cap.release(request(3, state=FILTERED))
    assert cap.uncertain_images == 3 and cap.spent_ticks == 2 * CENT


def test_an_answer_without_cost_makes_the_cap_unenforceable_at_once() -> None:
    cap = CostCap(5.0)
    cap.admit(1)
    why = cap.release(request(1, state=ANSWERED, ticks=None))
    assert why is not None and "reported no cost" in why and "cannot be enforced" in why
    assert cap.admit(1) is Admission.STOP
    assert cap.release(request(1, ticks=None)) is None  # said once


def test_earlier_tries_count_against_the_cap() -> None:
    cap = CostCap(0.10)
    cap.fold(
        [
            request(3, ticks=6 * CENT),  # try 1 stored 3 images
            request(1, state=SENT),  # in flight when try 1 was killed: may have been billed
            request(1, state=FAILED, error="HTTP 422"),  # refused: free
        ]
    )
    assert cap.spent_ticks == 6 * CENT and cap.uncertain_images == 1 and not cap.needs_probe
    assert cap.admit(1) is Admission.SEND  # 0.06 + 0.02 (unanswered) + 0.02 = 0.10
    assert cap.admit(1) is Admission.WAIT


def test_the_highest_price_seen_is_the_worst_case() -> None:
    cap = CostCap(1.0)
    cap.fold([request(10, ticks=20 * CENT), request(1, ticks=3 * CENT)])  # an edit: its input billed too
    assert cap.price_ticks == 3 * CENT
    assert cap.next_cost_usd(10) == pytest.approx(0.30)


def test_the_trigger_goes_on_with_the_cap_the_worker_folded() -> None:
    cap = CostCap(2.5)
    cap.fold([request(2, ticks=4 * CENT), request(1, state=SENT)])
    again = CostCap.from_json(cap.to_json())
    assert again.to_json() == cap.to_json()
    assert (again.cap_ticks, again.spent_ticks, again.uncertain_images) == (25 * 10**9, 4 * CENT, 1)
    assert CostCap.from_json(None).cap_ticks is None


def test_the_hooks_unanswered_retries_count_at_the_worst_price() -> None:
    cap = CostCap(0.10)
    cap.admit(1)
    cap.release(request(1, ticks=2 * CENT, unanswered_attempts=2))  # answered on the third attempt
    assert cap.spent_ticks == 2 * CENT and cap.uncertain_images == 2
    assert [cap.admit(1) for _ in range(3)] == [Admission.SEND, Admission.SEND, Admission.WAIT]
