"""The generation parameters, declared once: what each means, which values are known, what is refused.

Values change every few months: the known lists document and warn, and only a malformed value is
refused before a call. Everything else that lists the parameters (the operator's template fields, the
request body, the simulator) derives from :data:`GENERATION_OPTIONS`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypedDict

from airflow_provider_grok.protocol._text import choice, invalid

DEFAULT_MODEL = "grok-imagine-image"
MAX_IMAGES_PER_REQUEST = 10
# A safety bound on one generate_images() call (split into requests of 10): a typo such as n=1000
# would otherwise spend about $20 before anyone notices.
MAX_IMAGES_PER_CALL = 100
RESPONSE_FORMATS = ("url", "b64_json")
ASPECT_RATIOS = (
    "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "2:1", "1:2",
    "19.5:9", "9:19.5", "20:9", "9:20", "21:9", "5:2", "auto",
)  # fmt: skip
RESOLUTIONS = ("1k", "1.5k", "2k")
SIZES = ("1024x1024", "1536x1024", "1024x1536")
# Gateway 003 takes standard/hd; xAI's grok-imagine-image-2.0 takes low/medium/auto (auto is its default).
QUALITIES = ("standard", "hd", "low", "medium", "auto")
# What a well-formed value looks like, for values not in the lists above.
_WELL_FORMED = {
    "aspect_ratio": (re.compile(r"^(\d+(\.\d+)?:\d+(\.\d+)?|auto)$"), "W:H such as 16:9, or auto"),
    "resolution": (re.compile(r"^\d+(\.\d+)?k$"), "<number>k such as 1k or 2k"),
    "size": (re.compile(r"^\d+x\d+$"), "WIDTHxHEIGHT such as 1024x1024"),
    "quality": (re.compile(r"^[a-z][a-z0-9_-]*$"), "a lowercase word such as low, medium, auto, standard, hd"),
}
_KNOWN = {"aspect_ratio": ASPECT_RATIOS, "resolution": RESOLUTIONS, "size": SIZES, "quality": QUALITIES}
# The optional generation fields, declared once, with the gateway dialects that take each. A field is
# sent only when set. Every other list derives from here: GENERATION_OPTIONS (the hooks' keyword
# arguments and the operator's template fields), CORE_FIELDS, the request body, the simulator's dialects.
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "aspect_ratio": ("xai",),
    "resolution": ("xai",),
    "size": ("openai",),
    "quality": ("xai", "openai"),
    "user": ("xai", "openai"),
}
GENERATION_OPTIONS = ("model", "n", "response_format", *OPTIONAL_FIELDS, "extra_body")
# Fields the provider sets itself; extra_body may not override them.
CORE_FIELDS = ("prompt", "model", "n", "response_format", *OPTIONAL_FIELDS)


class GenerationOptions(TypedDict, total=False):
    """
    The optional parameters of a generation call, as hooks take them (see :class:`GenerationParams`);
    its keys are :data:`GENERATION_OPTIONS` (a test holds them equal: typing cannot derive them).
    """

    model: str | None
    n: int
    response_format: str
    aspect_ratio: str | None
    resolution: str | None
    size: str | None
    quality: str | None
    user: str | None
    extra_body: Mapping[str, Any] | None


@dataclass(frozen=True)
class GenerationParams:
    """
    One validated image-generation call. ``n`` may exceed 10: :meth:`request_bodies` splits it.

    Only the fields the user set are sent; gateways differ in which optional fields they accept.
    """

    prompt: str
    model: str
    n: int = 1
    response_format: str = "url"
    aspect_ratio: str | None = None
    resolution: str | None = None
    size: str | None = None
    quality: str | None = None
    user: str | None = None
    extra_body: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        validate_generation_params(self)

    def request_bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies to POST, one per chunk of at most 10 images, in image order."""
        return request_bodies(self, OPTIONAL_FIELDS)

    def with_n(self, n: int) -> GenerationParams:
        return replace(self, n=n)


def request_bodies(p: Any, fields: Iterable[str], sources: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """
    The JSON bodies of a generation or an edit (``p``): the fields that are set, then ``extra_body``, then
    what the provider sets itself, one body per chunk of at most 10 images, in image order.
    """
    base: dict[str, Any] = {"model": p.model, "prompt": p.prompt}
    base.update({name: getattr(p, name) for name in fields if getattr(p, name) is not None})
    base.update(p.extra_body or {})
    base["response_format"] = p.response_format
    base.update(sources or {})
    return [{**base, "n": chunk} for chunk in split_n(p.n)]


def split_n(n: int) -> list[int]:
    """25 -> [10, 10, 5]: the per-request counts for ``n`` images."""
    full, rest = divmod(n, MAX_IMAGES_PER_REQUEST)
    return [MAX_IMAGES_PER_REQUEST] * full + ([rest] if rest else [])


def validate_generation_params(p: GenerationParams) -> None:
    """Raise :class:`GrokValidationError` naming the parameter, the value and what is allowed."""
    if not isinstance(p.prompt, str) or not p.prompt.strip():
        raise invalid("prompt", p.prompt, "expected a non-empty string")
    if not isinstance(p.model, str) or not p.model.strip():
        raise invalid("model", p.model, "expected a model name such as " + DEFAULT_MODEL)
    if isinstance(p.n, bool) or not isinstance(p.n, int) or not 1 <= p.n <= MAX_IMAGES_PER_CALL:
        raise invalid(
            "n",
            p.n,
            f"expected an integer from 1 to {MAX_IMAGES_PER_CALL} (more than "
            f"{MAX_IMAGES_PER_REQUEST} is sent as several requests)",
        )
    choice("response_format", p.response_format, RESPONSE_FORMATS)
    for name, (pattern, form) in _WELL_FORMED.items():
        value = getattr(p, name)
        if value is not None and (not isinstance(value, str) or not pattern.match(value)):
            raise invalid(name, value, f"expected {form} (known: {', '.join(_KNOWN[name])})")
    if p.size is not None and (p.aspect_ratio is not None or p.resolution is not None):
        raise invalid(
            "size",
            p.size,
            "size (OpenAI-style gateways) cannot be combined with aspect_ratio/resolution "
            "(xAI-style); set one or the other",
        )
    if p.user is not None and not isinstance(p.user, str):
        raise invalid("user", p.user, "expected a string")
    if p.extra_body is not None:
        if not isinstance(p.extra_body, Mapping) or not all(isinstance(k, str) for k in p.extra_body):
            raise invalid("extra_body", p.extra_body, "expected a dict with string keys")
        clashes = sorted(set(p.extra_body) & set(CORE_FIELDS))
        if clashes:
            raise invalid(
                "extra_body", p.extra_body, f"{', '.join(clashes)} must be passed as parameters, not in extra_body"
            )
        try:
            json.dumps(p.extra_body, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise invalid("extra_body", p.extra_body, f"expected JSON values only ({err})") from None


def unknown_values(p: GenerationParams) -> list[str]:
    """Well-formed values this provider does not know yet: sent as given, worth a warning."""
    return [
        f"{name}={getattr(p, name)!r} is not a value this provider knows ({', '.join(_KNOWN[name])}); sending it "
        "as given (the gateway refuses a value it does not take, without charge)"
        for name in _KNOWN
        if getattr(p, name) is not None and getattr(p, name) not in _KNOWN[name]
    ]
