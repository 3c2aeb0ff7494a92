"""
Image edits, ``POST /v1/images/edits`` in xAI's JSON form: what a source may be, what is refused before a
call, and the request body. The answer has the generation shape (``responses.py``).

A source is sent as ``{"url": "<https URL or data URI>", "type": "image_url"}`` or ``{"file_id": "..."}``;
one source goes in ``image``, several in ``images`` (never both), and the prompt names them
``<IMAGE_0>``, ``<IMAGE_1>``... ``aspect_ratio`` applies only with several sources: one source keeps its
own ratio. Edits are billed for input and output images.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_grok.protocol._text import DATA_URI, invalid
from airflow_provider_grok.protocol.images import DEFAULT_MAX_IMAGE_BYTES, sniff_image_type
from airflow_provider_grok.protocol.params import GenerationParams, request_bodies

EDITS_PATH = "images/edits"
MAX_SOURCES = 3
# Models that take more sources than MAX_SOURCES.
MAX_SOURCES_BY_MODEL = {"grok-imagine-image-2.0": 5}
# The optional fields an edit takes (no size: the JSON form is xAI's).
EDIT_FIELDS = ("aspect_ratio", "resolution", "quality", "user")
_IMAGE_REF = re.compile(r"<IMAGE_(\d+)>")


def max_sources(model: str) -> int:
    return MAX_SOURCES_BY_MODEL.get(model, MAX_SOURCES)


def edit_source(item: Any, index: int, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> dict[str, str]:
    """
    One source as xAI takes it: image bytes become a data URI (after checking they are a JPEG, PNG or WebP
    under ``max_bytes``); an http(s) URL or an image data URI is sent as given; ``{"file_id": ...}`` (xAI's
    Files API) as given. Anything else is a :class:`GrokValidationError` naming ``images[index]``.
    """
    name = f"images[{index}]"
    if isinstance(item, bytes | bytearray):
        kind = sniff_image_type(bytes(item[:16]))
        if kind is None:
            raise invalid(name, f"<{len(item)} bytes>", "expected the bytes of a JPEG, PNG or WebP image")
        if len(item) > max_bytes:
            raise invalid(name, f"<{len(item)} bytes>", f"expected at most {max_bytes} bytes")
        return {"url": f"data:{kind.mime_type};base64,{base64.b64encode(item).decode()}", "type": "image_url"}
    if isinstance(item, Mapping) and set(item) == {"file_id"} and isinstance(item["file_id"], str):
        if not item["file_id"].strip():
            raise invalid(name, dict(item), "expected a non-empty xAI file id")
        return {"file_id": item["file_id"]}
    if isinstance(item, str):
        if item.startswith("data:"):
            _check_data_uri(item, name, max_bytes)
            return {"url": item, "type": "image_url"}
        parts = urlsplit(item)
        if parts.scheme in ("http", "https") and parts.netloc:
            return {"url": item, "type": "image_url"}
    raise invalid(
        name, item, 'expected image bytes, an http(s) URL, a data:image/... URI, or {"file_id": "<xAI file id>"}'
    )


def _check_data_uri(uri: str, name: str, max_bytes: int) -> None:
    match = DATA_URI.match(uri)
    payload = uri[match.end() :] if match else ""
    if not match or len(payload) * 3 // 4 > max_bytes:
        raise invalid(name, uri[:60] + "...", f"expected a data:image/...;base64 URI of at most {max_bytes} bytes")
    try:
        head = base64.b64decode(payload[:64], validate=True)
    except (binascii.Error, ValueError):
        head = b""
    if sniff_image_type(head) is None:
        raise invalid(name, uri[:60] + "...", "expected base64 of a JPEG, PNG or WebP image")


@dataclass(frozen=True)
class EditParams:
    """
    One validated edit call: ``prompt`` applied to ``sources`` (their JSON form, from :func:`edit_source`).
    ``n`` may exceed 10: :meth:`request_bodies` splits it.
    """

    prompt: str
    model: str
    sources: tuple[dict[str, str], ...]
    n: int = 1
    response_format: str = "url"
    aspect_ratio: str | None = None
    resolution: str | None = None
    quality: str | None = None
    user: str | None = None
    extra_body: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        validate_edit_params(self)

    def request_bodies(self) -> list[dict[str, Any]]:
        """One source goes in ``image``, several in ``images``; split by 10 like a generation."""
        if len(self.sources) == 1:
            return request_bodies(self, EDIT_FIELDS, {"image": dict(self.sources[0])})
        return request_bodies(self, EDIT_FIELDS, {"images": [dict(source) for source in self.sources]})

    def with_n(self, n: int) -> EditParams:
        return replace(self, n=n)


def validate_edit_params(p: EditParams) -> None:
    """The generation rules for the shared fields, then what only edits have: the sources and their names."""
    GenerationParams(  # validates the fields an edit shares with a generation
        prompt=p.prompt,
        model=p.model,
        n=p.n,
        response_format=p.response_format,
        resolution=p.resolution,
        quality=p.quality,
        user=p.user,
        extra_body={k: v for k, v in (p.extra_body or {}).items() if k not in ("image", "images")},
    )
    if p.extra_body and {"image", "images"} & set(p.extra_body):
        raise invalid("extra_body", p.extra_body, "image/images must be passed as the edit's images")
    limit = max_sources(p.model)
    if not isinstance(p.sources, Sequence) or not 1 <= len(p.sources) <= limit:
        count = len(p.sources) if isinstance(p.sources, Sequence) else p.sources
        raise invalid("images", f"<{count} sources>", f"expected 1 to {limit} sources for {p.model}")
    if p.aspect_ratio is not None:
        if len(p.sources) == 1:
            raise invalid(
                "aspect_ratio",
                p.aspect_ratio,
                "applies only with several sources (a single-source edit keeps the input's aspect ratio)",
            )
        GenerationParams(prompt=p.prompt, model=p.model, aspect_ratio=p.aspect_ratio)
    named = sorted({int(k) for k in _IMAGE_REF.findall(p.prompt)})
    if named and named[-1] >= len(p.sources):
        raise invalid(
            "prompt",
            p.prompt,
            f"it names <IMAGE_{named[-1]}> but there are {len(p.sources)} sources "
            f"(<IMAGE_0> to <IMAGE_{len(p.sources) - 1}>)",
        )


def build_edit_params(
    prompt: str, images: Sequence[Any], *, model: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, **options: Any
) -> EditParams:
    """:class:`EditParams` from what a caller passes: sources in any accepted form, options by name."""
    if isinstance(images, str | bytes | bytearray | Mapping) or not isinstance(images, Sequence):
        raise invalid("images", images, "expected a list of sources (one source still goes in a list)")
    sources = tuple(edit_source(item, index, max_bytes) for index, item in enumerate(images))
    return EditParams(prompt=prompt, model=model, sources=sources, **options)
