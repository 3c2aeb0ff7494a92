"""
The operators' own parameters, checked once rendered and before any money is spent: which parameter, what
was given, what is allowed. A light import (DAG files import the operators at parse time).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_grok.exceptions import GrokValidationError

if TYPE_CHECKING:
    from airflow_provider_grok.protocol import EditParams, GenerationParams

# S3 bucket naming rules (also what MinIO, R2 and Ceph accept): 3-63 chars, lowercase, digits, dots, hyphens.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


# Requests in flight at once. A worker holds a thread (and its stack) per request: 64 is plenty for a slot.
# A deferred task awaits each request in the triggerer for a few KB (measured: benchmarks/RESULTS.md), so it
# may keep enough in flight to fill the gateway's rate limit at real latency (5/s x 60-80 s for 2k images).
MAX_CONCURRENCY_SYNC = 64
MAX_CONCURRENCY_DEFERRED = 500


def check_init(max_concurrency: Any, max_xcom_images: Any, flags: Mapping[str, Any], *, deferrable: bool) -> None:
    """The parameters that are not templated, checked when the DAG is parsed (an import error, not 3 a.m.)."""
    most = MAX_CONCURRENCY_DEFERRED if deferrable else MAX_CONCURRENCY_SYNC
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or not 1 <= max_concurrency <= most:
        hint = "" if deferrable else f" (up to {MAX_CONCURRENCY_DEFERRED} with deferrable=True)"
        raise ValueError(f"Invalid max_concurrency={max_concurrency!r}: expected an integer from 1 to {most}{hint}.")
    if isinstance(max_xcom_images, bool) or not isinstance(max_xcom_images, int) or max_xcom_images < 0:
        raise ValueError(f"Invalid max_xcom_images={max_xcom_images!r}: expected an integer >= 0.")
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise ValueError(f"Invalid {name}={flag!r}: expected True or False.")


def prompt_list(prompt: Any) -> list[str]:
    """A prompt or a list of prompts, as a list, validated."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list | tuple) or not prompts:
        raise GrokValidationError(
            f"Invalid prompt={prompt!r}: expected a non-empty string or a non-empty list of strings."
        )
    for index, text in enumerate(prompts):
        if not isinstance(text, str) or not text.strip():
            raise GrokValidationError(f"Invalid prompt[{index}]={text!r}: expected a non-empty string.")
    return list(prompts)


def bucket_name(bucket: Any) -> str:
    if not isinstance(bucket, str) or not _BUCKET_NAME.match(bucket):
        hint = " (give the bucket name only, without s3://)" if isinstance(bucket, str) and "/" in bucket else ""
        raise GrokValidationError(
            f"Invalid s3_bucket={bucket!r}: expected an S3 bucket name (3-63 lowercase letters, digits, dots, "
            f"hyphens){hint}."
        )
    return bucket


def key_prefix(s3_key_prefix: Any, default: str, map_index: int | None) -> str:
    """The task instance's prefix: the user's (or ``default``), with ``/map-{i}`` for a mapped task."""
    if s3_key_prefix is None:
        prefix = default
    elif not isinstance(s3_key_prefix, str) or not s3_key_prefix.strip("/ "):
        raise GrokValidationError(
            f"Invalid s3_key_prefix={s3_key_prefix!r}: expected a non-empty key prefix such as "
            "'images/{{ ds }}', or None for the default."
        )
    else:
        prefix = s3_key_prefix.strip().strip("/")
    if map_index is not None and map_index >= 0:
        prefix = f"{prefix}/map-{map_index}"
    return prefix


def cost_cap(value: Any) -> float | None:
    """The rendered ``max_cost_usd`` as a number of dollars (None: no cap)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        cap = float(value)
    except (TypeError, ValueError):
        cap = float("nan")
    if isinstance(value, bool) or not cap > 0 or cap == float("inf"):
        raise GrokValidationError(
            f"Invalid max_cost_usd={value!r}: expected a number of US dollars > 0 (e.g. 5 or '2.50'), or None "
            "for no cap."
        )
    return cap


def put_args(args: Any, allowed: frozenset[str]) -> dict[str, Any]:
    """``s3_extra_args``: only ``put_object`` arguments the provider does not set itself."""
    args = args or {}
    if not isinstance(args, Mapping):
        raise GrokValidationError(f"Invalid s3_extra_args={args!r}: expected a dict of put_object arguments.")
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise GrokValidationError(
            f"Invalid s3_extra_args={dict(args)!r}: {', '.join(unknown)} not allowed; allowed are "
            f"{', '.join(sorted(allowed))}."
        )
    return dict(args)


@dataclass
class PromptParams:
    """
    What a task instance asks for, validated: the parameters of each prompt (or edit), the parameters as
    the user set them (the manifest's ``request``), and for edits each prompt's fingerprint and sources.
    """

    params: Sequence[GenerationParams | EditParams]
    parameters: dict[str, Any]
    fingerprints: Sequence[str] | None = None
    sources: Sequence[list[dict[str, Any]]] | None = None
