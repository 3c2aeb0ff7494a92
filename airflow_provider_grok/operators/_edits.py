"""
What a GrokEditImagesOperator edits: its ``source_images`` resolved into groups of sources, paired with its
prompts. Imported at run time only (it reads S3 sources through the task's store).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_grok.exceptions import GrokValidationError
from airflow_provider_grok.protocol import DEFAULT_MAX_IMAGE_BYTES
from airflow_provider_grok.storage import S3ImageStore


@dataclass(frozen=True)
class Source:
    """One source: what the hook is given (``payload``) and what the manifest and lineage record."""

    uri: str
    payload: Any
    sha256: str | None = None
    size: int | None = None
    s3_location: tuple[str, str] | None = None

    def describe(self) -> dict[str, Any]:
        return {"uri": self.uri, "sha256": self.sha256, "size": self.size}


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise GrokValidationError(f"Invalid source_images entry {uri!r}: expected s3://bucket/key.")
    return bucket, key


def _source(item: Any, store: S3ImageStore) -> Source:
    if isinstance(item, Mapping) and "s3_uri" in item:  # an image dict from GrokGenerateImagesOperator's XCom
        item = item["s3_uri"]
    if isinstance(item, Mapping) and set(item) == {"file_id"}:
        return Source(f"xai-file:{item['file_id']}", dict(item))
    if isinstance(item, bytes | bytearray):
        data = bytes(item)
        return Source("inline", data, hashlib.sha256(data).hexdigest(), len(data))
    if isinstance(item, str) and item.startswith("s3://"):
        bucket, key = _split_s3(item)
        data = store.read_object(bucket, key, DEFAULT_MAX_IMAGE_BYTES)
        return Source(item, data, hashlib.sha256(data).hexdigest(), len(data), (bucket, key))
    if isinstance(item, str) and item.startswith("data:"):
        return Source("inline data URI", item, hashlib.sha256(item.encode()).hexdigest(), len(item))
    if isinstance(item, str) and item.startswith(("http://", "https://")):
        return Source(item, item)
    raise GrokValidationError(
        f"Invalid source_images entry {str(item)[:120]!r}: expected an s3://bucket/key URI, an http(s) URL, a "
        'data:image/... URI, {"file_id": ...}, or an image dict from GrokGenerateImagesOperator.'
    )


def _manifest_images(summary: Mapping[str, Any], store: S3ImageStore) -> list[str]:
    """The image URIs a manifest lists (the summary XCom of a large generation names its manifest)."""
    from airflow_provider_grok.record.manifest import decode

    uri = str(summary["manifest_uri"])
    bucket, key = _split_s3(uri)
    manifest = decode(store.read_object(bucket, key, 512 * 1024 * 1024))
    if manifest is None:
        raise GrokValidationError(
            f"Invalid source_images: {uri} is not a manifest this release of airflow-provider-grok reads."
        )
    return [image.s3_uri for image in manifest.images()]


def resolve_sources(value: Any, store: S3ImageStore) -> list[list[Source]]:
    """
    ``source_images`` as groups: a single entry or a flat list gives one group per source; a list of lists
    gives one group per inner list (a multi-reference edit).
    """
    if isinstance(value, Mapping) and "manifest_uri" in value:
        value = _manifest_images(value, store)
    if isinstance(value, str | bytes | bytearray | Mapping):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise GrokValidationError(f"Invalid source_images={str(value)[:120]!r}: expected a non-empty list of sources.")
    groups: list[list[Source]] = []
    for entry in value:
        if isinstance(entry, Mapping) and "manifest_uri" in entry:
            groups.extend([_source(uri, store)] for uri in _manifest_images(entry, store))
        elif isinstance(entry, list | tuple):
            groups.append([_source(item, store) for item in entry])
        else:
            groups.append([_source(entry, store)])
    return groups


def pair_edits(prompts: list[str], groups: list[list[Source]]) -> list[tuple[str, list[Source]]]:
    """One prompt for every group, every prompt for one group, or pairwise; anything else is refused."""
    if len(prompts) == 1:
        return [(prompts[0], group) for group in groups]
    if len(groups) == 1:
        return [(prompt, groups[0]) for prompt in prompts]
    if len(prompts) == len(groups):
        return list(zip(prompts, groups, strict=True))
    raise GrokValidationError(
        f"{len(prompts)} prompts and {len(groups)} source groups cannot be paired: give one prompt (applied to "
        "every source or group), one source or group (every prompt applied to it), or as many prompts as groups."
    )
