"""
Names in S3 and request ids: where each object of a task instance's record lives, and how ids are spelled.

Under the task instance's prefix::

    {prefix}/{prompt_index}-{image_index}.{ext}     an image; its object metadata is its own record
    {prefix}/manifest.json                          the manifest: every try folded
    {prefix}/_grok/requests/{request_id}.json       a request's receipt (folded into the manifest, then deleted)
    {prefix}/_grok/plans/{execution}.json           what a deferred batch's trigger is to send

A request id is ``t{try}-{execution}-{sender}{sequence:05d}``, e.g. ``t1-3f9a2c-d00007``: the try, six hex
digits drawn once per execution (a cleared task may run a try number again), who sends it (``s`` this
worker, ``d`` the trigger) and a counter. A request the trigger sends again after a triggerer restart gets
``-r{k}`` appended (k = receipts already on record for it), so the abandoned one stays on record.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

MANIFEST_NAME = "manifest.json"
BOOKKEEPING_DIR = "_grok"
RECEIPTS_DIR = f"{BOOKKEEPING_DIR}/requests"
PLANS_DIR = f"{BOOKKEEPING_DIR}/plans"


class Sender(enum.StrEnum):
    """Who sends a request, the letter in its id: the worker's threads (sync) or the trigger (deferred)."""

    WORKER = "s"
    TRIGGER = "d"


WORKER, TRIGGER = Sender.WORKER, Sender.TRIGGER

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9!_.*'()=-]+")
_IMAGE_NAME = re.compile(r"^(?P<prompt>\d+)-(?P<image>\d+)\.(?P<ext>jpg|png|webp)$")
_RESENT = re.compile(r"-r\d+$")


# --- keys ---


def safe_key_part(text: str) -> str:
    """Make a run id or task id safe as one S3 key segment (``:`` and ``+`` of run ids become ``_``)."""
    return _UNSAFE_KEY_CHARS.sub("_", text).strip("_") or "_"


def default_prefix(dag_id: str, run_id: str, task_id: str) -> str:
    """The per-task-instance prefix, stable across tries so a retry resumes instead of duplicating."""
    return "/".join(["grok", *(safe_key_part(part) for part in (dag_id, run_id, task_id))])


def manifest_key(prefix: str) -> str:
    return f"{prefix}/{MANIFEST_NAME}"


def image_key(prefix: str, prompt_index: int, image_index: int, extension: str) -> str:
    return f"{prefix}/{prompt_index}-{image_index}.{extension}"


def parse_image_key(prefix: str, key: str) -> tuple[int, int] | None:
    """(prompt_index, image_index) of an image key directly under ``prefix``, else None."""
    if not key.startswith(prefix + "/"):
        return None
    match = _IMAGE_NAME.match(key[len(prefix) + 1 :])
    return (int(match["prompt"]), int(match["image"])) if match else None


def receipt_key(prefix: str, request_id: str) -> str:
    return f"{prefix}/{RECEIPTS_DIR}/{request_id}.json"


def is_receipt_key(prefix: str, key: str) -> bool:
    return key.startswith(f"{prefix}/{RECEIPTS_DIR}/") and key.endswith(".json")


def plan_key(prefix: str, execution: str) -> str:
    return f"{prefix}/{PLANS_DIR}/{execution}.json"


def is_bookkeeping_key(prefix: str, key: str) -> bool:
    """Receipts and plans: folded into the manifest, then deleted."""
    return key.startswith(f"{prefix}/{BOOKKEEPING_DIR}/")


# --- request ids ---


def request_id(try_number: int, execution: str, sender: Sender, sequence: int) -> str:
    """``t1-3f9a2c-d00007``: see the module doc."""
    return f"t{try_number}-{execution}-{sender.value}{sequence:05d}"


def resent_id(planned_id: str, earlier_receipts: int) -> str:
    """The id of a planned request sent again after ``earlier_receipts`` receipts of it stayed ``sent``."""
    return f"{planned_id}-r{earlier_receipts}"


def planned_id(any_id: str) -> str:
    """The planned request an id belongs to (``t1-3f9a2c-d00007-r1`` → ``t1-3f9a2c-d00007``)."""
    return _RESENT.sub("", any_id)


# --- identity of a generation ---


def fingerprint(prompt: str, request: Mapping[str, Any]) -> str:
    """What makes two generations interchangeable: the prompt and the parameters that shape the image."""
    shaping = {k: v for k, v in request.items() if k not in ("response_format",)}
    canonical = json.dumps({"prompt": prompt, **shaping}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
