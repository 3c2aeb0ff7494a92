"""What a task instance paid: every request of every try, in US dollars, and what may have been billed unseen."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow_provider_grok.record.records import RequestRecord

USD_TICKS = 10**10  # xAI reports usage.cost_in_usd_ticks; 10^10 ticks are one US dollar.


def usd(ticks: float) -> float:
    return round(ticks / USD_TICKS, 6)


def tally(requests: Sequence[RequestRecord]) -> dict[str, Any]:
    """The cost of ``requests``: ``usd`` is None ("unknown") when a billed request reported no usage."""
    billed = [r for r in requests if r.billed]
    ticks = [r.cost_ticks for r in billed]
    return {
        "requests": len(requests),
        "requests_billed": len(billed),
        "requests_unanswered": sum(1 for r in requests if r.billed is None),
        "attempts_unanswered": sum(r.unanswered_attempts for r in requests),
        "requests_without_usage": sum(1 for t in ticks if t is None),
        "images_returned": sum(r.returned or 0 for r in billed),
        "usd": None if any(t is None for t in ticks) else usd(sum(t for t in ticks if t is not None)),
    }


def cost_summary(requests: Iterable[RequestRecord], try_number: int, images_stored: int) -> dict[str, Any]:
    """
    What the task instance paid, all tries together, this try alone and by try.

    Requests sent whose answer was never seen (in flight at a crash) are counted in ``requests_unanswered``,
    and the hook's retried attempts whose answer never arrived in ``attempts_unanswered``: they may have been
    billed, and their cost is not in ``usd``. So what the gateway billed is at most ``usd`` plus the worst
    case of those.
    """
    everything = sorted(requests, key=lambda r: (r.try_number, r.id))
    total = tally(everything)
    tries = sorted({r.try_number for r in everything})
    by_try = {str(t): tally([r for r in everything if r.try_number == t]) for t in tries}
    return {
        **total,
        "images_stored": images_stored,
        # Paid for but not in S3 now: moderated, lost in a crash, overwritten or regenerated.
        "images_paid_not_stored": max(total["images_returned"] - images_stored, 0),
        "this_try": by_try.get(str(try_number)) or tally([]),
        "by_try": by_try,
    }


def describe_cost(cost: Mapping[str, Any]) -> str:
    """``$0.1200`` or ``unknown``, plus the requests whose cost cannot be known."""
    text = "unknown" if cost["usd"] is None else f"${cost['usd']:.4f}"
    if cost["requests_unanswered"]:
        text += f" + {cost['requests_unanswered']} unanswered requests (may have been billed)"
    if cost.get("attempts_unanswered"):
        text += f" + {cost['attempts_unanswered']} retried attempts that got no answer (may have been billed)"
    return text
