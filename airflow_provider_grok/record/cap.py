"""
A task instance's money cap (``max_cost_usd``): may the next request be sent?

The cap covers every try of the task instance together, so it starts from what the record of earlier tries
says (:meth:`CostCap.fold`). Then the batch driver (``driver.py``) asks :meth:`CostCap.admit` before each
request's receipt is written, and hands the request back with :meth:`CostCap.release` once its outcome is
recorded (or :meth:`CostCap.withdraw` when it was admitted but never sent). It is not thread-safe: the
executors serialise their calls to the driver.

The rules:

- Before any answer has told the price, one request goes alone (the worker also makes it a request of one
  image, the smallest bill possible: :attr:`CostCap.needs_probe`).
- After that, the worst case of everything not yet released is reserved at the highest price per image seen so
  far: requests in flight, and requests sent whose answer was never seen (they may have been billed).
- A request is sent only if what was billed plus every reservation plus its own worst case stays within
  the cap. If it does not fit but requests are in flight, the driver waits for them (one may fail and free
  its reservation); with nothing in flight, sending stops for good.
- An answer that reports no cost (``usage.cost_in_usd_ticks``) makes the cap unenforceable: sending stops
  at once, before more is spent, and :meth:`release` says why.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_grok.record.cost import USD_TICKS
from airflow_provider_grok.record.lifecycle import FILTERED
from airflow_provider_grok.record.records import RequestRecord


class Admission(enum.Enum):
    SEND = "send"  # reserved: send it now
    WAIT = "wait"  # ask again when a request in flight is released
    STOP = "stop"  # not sent, nor any request after it


class CostCap:
    """
    :param max_cost_usd: the cap on everything this task instance is billed, all tries together; None for
        no cap (every request is admitted).
    """

    def __init__(self, max_cost_usd: float | None) -> None:
        self.max_cost_usd = max_cost_usd
        self.cap_ticks = None if max_cost_usd is None else round(max_cost_usd * USD_TICKS)
        self.spent_ticks = 0  # billed and reported
        self.uncertain_images = 0  # images of requests that may have been billed, cost unknown
        self.price_ticks: float | None = None  # the highest cost per image seen so far
        self.unenforceable: str | None = None
        self.stopped = False
        self._in_flight = 0  # images reserved by requests admitted and not released

    # --- what is known before sending ---

    def fold(self, requests: Iterable[RequestRecord]) -> None:
        """Account for requests already recorded (earlier tries, or the trigger before a restart)."""
        for request in requests:
            self._account(request)

    @property
    def needs_probe(self) -> bool:
        """A cap is set and no answer has told the price yet: the first request should be of one image."""
        return self.cap_ticks is not None and self.price_ticks is None and self.unenforceable is None

    # --- around each request ---

    def admit(self, images: int) -> Admission:
        """May a request of ``images`` images be sent now? ``SEND`` reserves its worst case."""
        if self.cap_ticks is None:
            return Admission.SEND
        if self.stopped or self.unenforceable:
            self.stopped = True
            return Admission.STOP
        if self.price_ticks is None:
            if self._in_flight:
                return Admission.WAIT  # the request in flight will tell the price
            self._in_flight += images
            return Admission.SEND
        if self._worst_ticks(images) <= self.cap_ticks:
            self._in_flight += images
            return Admission.SEND
        if self._in_flight:
            return Admission.WAIT
        self.stopped = True
        return Admission.STOP

    def release(self, request: RequestRecord) -> str | None:
        """
        Release an admitted request's reservation and account for its outcome. Returns why the cap cannot
        be enforced any more when this request made it so (once), else None.
        """
        if self.cap_ticks is None:
            return None
        self._in_flight = max(self._in_flight - request.count, 0)
        before = self.unenforceable
        self._account(request)
        return self.unenforceable if self.unenforceable != before else None

    def withdraw(self, images: int) -> None:
        """Release the reservation of a request admitted but never sent (its receipt could not be written)."""
        if self.cap_ticks is not None:
            self._in_flight = max(self._in_flight - images, 0)

    # --- reading it ---

    def spent_usd(self) -> float:
        return self.spent_ticks / USD_TICKS

    def describe(self) -> str:
        """What the task instance has spent against its cap, for messages."""
        text = f"${self.spent_usd():.4f} billed"
        if self.uncertain_images:
            text += f" (+ {self.uncertain_images} images whose requests may have been billed)"
        return f"{text} of max_cost_usd=${self.max_cost_usd:.4f}"

    def next_cost_usd(self, images: int) -> float | None:
        """The worst case of a request of ``images`` images, when the price is known."""
        return None if self.price_ticks is None else self.price_ticks * images / USD_TICKS

    def to_json(self) -> dict[str, Any]:
        """What a trigger needs to go on with the same cap (nothing is in flight when the plan is written)."""
        return {
            "max_cost_usd": self.max_cost_usd,
            "spent_ticks": self.spent_ticks,
            "uncertain_images": self.uncertain_images,
            "price_ticks": self.price_ticks,
            "unenforceable": self.unenforceable,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> CostCap:
        data = data or {}
        cap = cls(data.get("max_cost_usd"))
        cap.spent_ticks = int(data.get("spent_ticks") or 0)
        cap.uncertain_images = int(data.get("uncertain_images") or 0)
        price = data.get("price_ticks")
        cap.price_ticks = None if price is None else float(price)
        cap.unenforceable = data.get("unenforceable")
        return cap

    # --- the arithmetic ---

    def _worst_ticks(self, images: int) -> float:
        assert self.price_ticks is not None
        return self.spent_ticks + self.price_ticks * (self.uncertain_images + self._in_flight + images)

    def _account(self, request: RequestRecord) -> None:
        billed = request.billed
        self.uncertain_images += request.count * request.unanswered_attempts  # the hook's unanswered retries
        if billed is False:
            return  # refused before generating: not billed
        if billed is None or request.state == FILTERED:
            # Sent without an answer seen, or refused by moderation (billed, cost not reported): the worst case.
            self.uncertain_images += request.count
            return
        ticks = request.cost_ticks
        if ticks is None:
            self.uncertain_images += request.count
            if self.cap_ticks is not None and self.unenforceable is None:
                self.unenforceable = (
                    f"the gateway's answer to request {request.id} reported no cost (usage.cost_in_usd_ticks), "
                    "so what further requests cost cannot be known and max_cost_usd cannot be enforced. Nothing "
                    "more is sent. Use a gateway that reports usage (xAI does), or remove max_cost_usd."
                )
            return
        self.spent_ticks += ticks
        per_image = ticks / max(request.count, 1)
        self.price_ticks = per_image if self.price_ticks is None else max(self.price_ticks, per_image)
