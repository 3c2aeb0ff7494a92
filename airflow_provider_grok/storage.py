"""
Where generated images land in S3: the key layout, the manifest, and reuse of what an earlier try stored.

Layout: ``s3://{bucket}/{prefix}/{prompt_index}-{image_index}.{ext}`` plus ``{prefix}/manifest.json``.
The manifest is the task instance's record: request parameters (never the key), every stored image,
prompts that came back short or failed, usage and request ids. A retry reads it and pays only for what
is missing. Imported by the operator at run time only: it pulls in boto3 through the amazon provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from botocore.exceptions import BotoCoreError, ClientError

from airflow_provider_grok import __version__
from airflow_provider_grok.exceptions import GrokStorageError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
GENERATOR = f"airflow-provider-grok/{__version__}"  # in object metadata and manifests

# put_object arguments a user may add through s3_extra_args. The provider sets Bucket, Key, Body,
# ContentType, Metadata and the checksum itself; anything else would fail only after money was spent.
ALLOWED_S3_EXTRA_ARGS = frozenset(
    {
        "ACL",
        "BucketKeyEnabled",
        "CacheControl",
        "ContentDisposition",
        "ContentEncoding",
        "ContentLanguage",
        "ExpectedBucketOwner",
        "Expires",
        "GrantFullControl",
        "GrantRead",
        "GrantReadACP",
        "GrantWriteACP",
        "ObjectLockLegalHoldStatus",
        "ObjectLockMode",
        "ObjectLockRetainUntilDate",
        "RequestPayer",
        "SSECustomerAlgorithm",
        "SSECustomerKey",
        "SSECustomerKeyMD5",
        "SSEKMSEncryptionContext",
        "SSEKMSKeyId",
        "ServerSideEncryption",
        "StorageClass",
        "Tagging",
    }
)
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9!_.*'()=-]+")


def safe_key_part(text: str) -> str:
    """Make a run id or task id safe as one S3 key segment (``:`` and ``+`` of run ids become ``_``)."""
    return _UNSAFE_KEY_CHARS.sub("_", text).strip("_") or "_"


def default_prefix(dag_id: str, run_id: str, task_id: str) -> str:
    """The per-task-instance prefix, stable across tries so a retry overwrites instead of duplicating."""
    return "/".join(["grok", *(safe_key_part(part) for part in (dag_id, run_id, task_id))])


def image_key(prefix: str, prompt_index: int, image_index: int, extension: str) -> str:
    return f"{prefix}/{prompt_index}-{image_index}.{extension}"


def ascii_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """S3 user metadata must be ASCII: non-ASCII characters become ``?`` (prompts live in the manifest)."""
    return {key: str(value).encode("ascii", "replace").decode("ascii") for key, value in values.items()}


def fingerprint(prompt: str, request: Mapping[str, Any]) -> str:
    """What makes two generations interchangeable: the prompt and the parameters that shape the image."""
    shaping = {k: v for k, v in request.items() if k not in ("response_format",)}
    canonical = json.dumps({"prompt": prompt, **shaping}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class StoredImage:
    """One image in S3. ``to_xcom()`` is the small dict the operator returns (never the bytes)."""

    s3_uri: str
    bucket: str
    key: str
    content_type: str
    size_bytes: int
    sha256: str
    prompt: str
    revised_prompt: str | None
    model: str | None
    prompt_index: int
    image_index: int

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PromptRecord:
    """
    What happened to one prompt, across tries.

    ``status``: ``complete`` (all images stored), ``partial`` (moderation returned fewer), ``filtered``
    (moderation returned none), ``failed`` (an error; see ``error``), ``pending`` (not attempted yet).
    """

    prompt_index: int
    prompt: str
    fingerprint: str
    requested: int
    status: str = "pending"
    images: list[StoredImage] = field(default_factory=list)
    filtered: int = 0
    error: str | None = None
    not_stored: list[dict[str, Any]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)

    @property
    def missing(self) -> int:
        """Images still owed: asked for, neither stored nor removed by moderation."""
        return max(self.requested - len(self.images) - self.filtered, 0)

    def next_image_index(self) -> int:
        return max((i.image_index for i in self.images), default=-1) + 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # recurses: images become their XCom dicts

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PromptRecord:
        fields = dict(data)
        fields["images"] = [StoredImage(**i) for i in data.get("images", [])]
        return cls(**fields)


def settle_status(record: PromptRecord, *, allow_partial: bool) -> None:
    """Set a record's status (and, for a failure, its reason) once its generation has run."""
    if record.missing:
        record.status = "failed"
        if record.error is None:
            if record.not_stored:
                last = record.not_stored[-1]["error"]
                record.error = f"{len(record.not_stored)} generated images were not stored (last: {last})"
            else:
                record.error = f"{record.missing} images were not generated"
    elif not record.images:
        record.status = "filtered" if allow_partial else "failed"
        if not allow_partial:
            record.error = record.error or "content moderation returned no images (allow_partial=False)"
    else:
        record.status = "partial" if record.filtered else "complete"


def _error_code(err: Exception) -> str:
    """The S3 error code of a botocore ClientError (``NoSuchKey``, ``AccessDenied``...), else ``""``."""
    return str(err.response.get("Error", {}).get("Code", "")) if isinstance(err, ClientError) else ""


class S3ImageStore:
    """
    Reads and writes one task instance's images and manifest through the amazon provider's S3Hook,
    so the user's AWS connection (keys, role, region, ``endpoint_url``) applies.
    """

    def __init__(self, aws_conn_id: str | None, bucket: str, prefix: str, extra_args: Mapping[str, Any]) -> None:
        self.hook = S3Hook(aws_conn_id=aws_conn_id)
        self.bucket = bucket
        self.prefix = prefix
        self.extra_args = dict(extra_args)
        self.client = self.hook.get_conn()  # boto3 clients are thread-safe; one for all workers

    @property
    def manifest_key(self) -> str:
        return f"{self.prefix}/{MANIFEST_NAME}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _explain(self, action: str, key: str, err: Exception) -> GrokStorageError:
        code = _error_code(err)
        status = (
            err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(err, ClientError) else None
        )
        where = self.uri(key)
        if code == "NoSuchBucket":
            advice = f"the bucket {self.bucket!r} does not exist (check s3_bucket and the AWS connection's region)"
        elif code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
            advice = (
                f"access denied: the AWS connection needs s3:GetObject, s3:PutObject and s3:ListBucket on "
                f"{self.bucket!r}"
            )
        else:
            advice = f"{type(err).__name__}: {err}"
        return GrokStorageError(f"Could not {action} {where}: {advice}.", status=status)

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest an earlier try left, or None. Also the cheap pre-flight check of bucket and access."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.manifest_key)["Body"].read()
        except ClientError as err:
            if _error_code(err) in ("NoSuchKey", "404"):
                return None
            raise self._explain("read", self.manifest_key, err) from None
        except BotoCoreError as err:
            raise self._explain("read", self.manifest_key, err) from None
        try:
            manifest = json.loads(body)
        except ValueError:
            return None
        return manifest if isinstance(manifest, dict) and manifest.get("manifest_version") == MANIFEST_VERSION else None

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        body = json.dumps(manifest, indent=2, ensure_ascii=False).encode()
        self._put(self.manifest_key, body, "application/json", {"generator": GENERATOR})

    def put_image(self, key: str, data: bytes, content_type: str, metadata: Mapping[str, Any]) -> str:
        """Upload with a SHA-256 that S3 verifies on receipt; return the hex digest."""
        return self._put(key, data, content_type, metadata)

    def _put(self, key: str, data: bytes, content_type: str, metadata: Mapping[str, Any]) -> str:
        digest = hashlib.sha256(data)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(digest.digest()).decode(),
                Metadata=ascii_metadata(metadata),
                **self.extra_args,
            )
        except (ClientError, BotoCoreError) as err:
            raise self._explain("write", key, err) from None
        return digest.hexdigest()

    def existing_sizes(self, keys: Iterable[str]) -> dict[str, int]:
        """Sizes of those ``keys`` that exist: one LIST of the prefix, or a HEAD per key without ListBucket."""
        wanted = set(keys)
        if not wanted:
            return {}
        found: dict[str, int] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + "/"
            ):
                found.update({o["Key"]: o["Size"] for o in page.get("Contents", []) if o["Key"] in wanted})
            return found
        except ClientError as err:
            if _error_code(err) not in ("AccessDenied", "403"):
                raise self._explain("list", self.prefix + "/", err) from None
        for key in wanted:
            try:
                found[key] = self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
            except ClientError:
                continue
        return found
