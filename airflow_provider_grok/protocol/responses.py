"""Reading a generation answer: images, placeholders moderation left, usage, and joining split requests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_provider_grok.exceptions import GrokContentFilteredError, GrokResponseError
from airflow_provider_grok.protocol._text import DATA_URI, redact, shown

USD_TICKS = 10**10  # xAI reports usage.cost_in_usd_ticks; 10^10 ticks are one US dollar.


@dataclass(frozen=True)
class GeneratedImage:
    """
    One image as the gateway returned it: a temporary ``url`` or inline ``b64_json`` (prefix stripped).

    :param index: position within the call, 0-based, continuous across split requests.
    """

    index: int
    url: str | None = None
    b64_json: str | None = field(default=None, repr=False)
    revised_prompt: str | None = None
    mime_type: str | None = None


@dataclass(frozen=True)
class ImageGenerationResult:
    """
    The outcome of one ``generate_images`` call.

    ``requested`` is the ``n`` asked for; moderation may return fewer ``images`` (still billed).
    ``unanswered_attempts``: attempts before the one that answered whose answer never arrived (a timeout, a
    connection dropped mid-answer); the gateway may have billed each of them.
    """

    created: int | None
    model: str | None
    images: list[GeneratedImage]
    requested: int
    usage: dict[str, Any] | None = None
    request_ids: list[str] = field(default_factory=list)
    malformed: int = 0
    extra_returned: int = 0
    unanswered_attempts: int = 0

    @property
    def filtered_count(self) -> int:
        """Images asked for but removed by content moderation (not returned, or returned as placeholders)."""
        return max(self.requested - len(self.images) - self.malformed, 0)

    @property
    def cost_usd(self) -> float | None:
        ticks = (self.usage or {}).get("cost_in_usd_ticks")
        return ticks / USD_TICKS if isinstance(ticks, int | float) else None


def parse_generation_response(
    payload: Any, *, requested: int, request_id: str | None = None, first_index: int = 0, secret: str | None = None
) -> ImageGenerationResult:
    """
    Read one 200 response body (already JSON-decoded).

    Items xAI marks ``"respect_moderation": false`` are placeholders for images moderation removed: they
    count as filtered, never as images. Items with neither ``url`` nor ``b64_json`` count as ``malformed``.
    Images beyond ``requested`` are dropped (``extra_returned``): their keys would collide with the next
    request's. Anything quoted from the body is redacted of ``secret``.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise GrokResponseError(
            redact(
                "The gateway answered 200 but not with an image-generation response (expected a JSON object "
                f"with a 'data' list, got {shown(payload)[:200]}).",
                secret,
            ),
            request_id=request_id,
        )
    images: list[GeneratedImage] = []
    malformed = extra = 0
    for item in payload["data"]:
        if isinstance(item, dict) and item.get("respect_moderation") is False:
            continue  # a placeholder: filtered by moderation
        url, b64, mime = (
            (item.get("url") or None, item.get("b64_json") or None, item.get("mime_type") or None)
            if isinstance(item, dict)
            else (None, None, None)
        )
        if isinstance(b64, str) and (match := DATA_URI.match(b64)):
            b64, mime = b64[match.end() :], mime or match.group("mime")
        if not isinstance(url, str | None) or not isinstance(b64, str | None) or (not url and not b64):
            malformed += 1
            continue
        if len(images) == requested:
            extra += 1
            continue
        images.append(
            GeneratedImage(
                index=first_index + len(images),
                url=url,
                b64_json=b64,
                revised_prompt=item.get("revised_prompt") or None,
                mime_type=mime,
            )
        )
    created = payload.get("created")
    usage = payload.get("usage")
    return ImageGenerationResult(
        created=created if isinstance(created, int) else None,
        model=payload.get("model") if isinstance(payload.get("model"), str) else None,
        images=images,
        requested=requested,
        usage=usage if isinstance(usage, dict) else None,
        request_ids=[request_id] if request_id else [],
        malformed=malformed,
        extra_returned=extra,
    )


def merge_results(parts: Sequence[ImageGenerationResult], *, model: str | None = None) -> ImageGenerationResult:
    """Join the results of split requests, in order, renumbering images 0..k-1."""
    images: list[GeneratedImage] = []
    for part in parts:
        offset = len(images)
        images.extend([replace(image, index=offset + i) for i, image in enumerate(part.images)])
    usages = [p.usage for p in parts if p.usage]
    created = [p.created for p in parts if p.created is not None]
    return ImageGenerationResult(
        created=max(created) if created else None,
        model=next((p.model for p in parts if p.model), model),
        images=images,
        requested=sum(p.requested for p in parts),
        usage=sum_usage(usages) if usages else None,
        request_ids=[rid for p in parts for rid in p.request_ids],
        malformed=sum(p.malformed for p in parts),
        extra_returned=sum(p.extra_returned for p in parts),
        unanswered_attempts=sum(p.unanswered_attempts for p in parts),
    )


def sum_usage(usages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add usage dicts field by field (numbers summed, nested dicts merged, other values kept first-seen)."""
    total: dict[str, Any] = {}
    for usage in usages:
        for key, value in usage.items():
            current = total.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float | dict):
                total.setdefault(key, value)
            elif isinstance(value, dict):
                total[key] = sum_usage([current, value]) if isinstance(current, dict) else dict(value)
            elif isinstance(current, int | float) and not isinstance(current, bool):
                total[key] = current + value
            else:
                total.setdefault(key, value)
    return total


def settle_result(result: ImageGenerationResult, asked: int, model: str) -> list[str]:
    """
    What one call's answer means: raises when it holds no image at all (moderation refused every one, or
    the gateway sent items without images), else returns the notes worth a log line.
    """
    request_id = result.request_ids[0] if result.request_ids else None
    if not result.images and result.malformed:
        raise GrokResponseError(
            f"The gateway answered with {result.malformed} items but no image in any of them.",
            status=200,
            request_id=request_id,
        )
    if not result.images:
        raise GrokContentFilteredError(
            f"The gateway returned no images for the prompt (asked for {asked}): content moderation "
            "refused them all, and they may still be billed. Rephrase the prompt.",
            status=200,
            request_id=request_id,
        )
    notes = []
    if result.malformed:
        notes.append(
            f"The gateway returned {result.malformed} items with neither an image URL nor b64_json "
            "(billed, not images)."
        )
    if result.extra_returned:
        notes.append(f"The gateway returned {result.extra_returned} images more than the {asked} asked for; dropped.")
    if result.filtered_count:
        notes.append(
            f"Content moderation removed {result.filtered_count} of {result.requested} images "
            f"(request ids: {', '.join(result.request_ids) or 'none'})."
        )
    cost = f", cost ${result.cost_usd:.4f}" if result.cost_usd is not None else ""
    notes.append(f"Generated {len(result.images)} of {asked} images with {result.model or model}{cost}.")
    return notes
