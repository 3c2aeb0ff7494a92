"""
Moving bytes to and from S3 for one task instance: images, request receipts, plans and the manifest.

What those objects mean and where they live is ``record/``'s; this module only reads, writes, lists and
deletes them, through the amazon provider's S3Hook. Imported at run time only: it pulls in boto3.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from airflow_provider_grok.exceptions import GrokStorageError
from airflow_provider_grok.record import manifest
from airflow_provider_grok.record.keys import manifest_key
from airflow_provider_grok.record.records import GENERATOR

READ_WORKERS = 16  # parallel GETs/HEADs when a retry reads what an earlier try left
# A paid image that S3 refuses is kept and tried again this long (seconds) before it is reported not stored.
DEFAULT_S3_OUTAGE_SECONDS = 60.0

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


def ascii_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """S3 user metadata must be ASCII: non-ASCII characters become ``?`` (prompts live in the manifest)."""
    return {key: str(value).encode("ascii", "replace").decode("ascii") for key, value in values.items()}


def _error_code(err: Exception) -> str:
    """The S3 error code of a botocore ClientError (``NoSuchKey``, ``AccessDenied``...), else ``""``."""
    return str(err.response.get("Error", {}).get("Code", "")) if isinstance(err, ClientError) else ""


# Throttling (503 SlowDown) and brief faults: botocore's standard retries, exponential backoff with jitter,
# unless the AWS connection configures retries itself (config_kwargs: {"retries": ...}).
DEFAULT_RETRIES = {"mode": "standard", "max_attempts": 8}


def retrying_config(config: Config) -> Config:
    return config if config.retries else config.merge(Config(retries=DEFAULT_RETRIES))


def outage_seconds() -> float:
    """How long a paid image waits in memory for S3 to accept it again (``[grok] s3_outage_seconds``)."""
    from airflow.sdk.configuration import conf

    return conf.getfloat("grok", "s3_outage_seconds", fallback=DEFAULT_S3_OUTAGE_SECONDS)


class _S3Hook(S3Hook):
    """
    The amazon provider's S3Hook, all of it (connection, session, role, region, endpoint), except that it
    names its caller in the User-Agent without walking the stack: its own lookup (``inspect.stack()``,
    which reads the source of every frame) costs 0.15 s of a task's start, before any request can go out.
    """

    def _get_caller(self, target_function_name: str = "execute") -> str:
        return "airflow-provider-grok"


class S3ImageStore:
    """
    Reads and writes one task instance's images and manifest through the amazon provider's S3Hook,
    so the user's AWS connection (keys, role, region, ``endpoint_url``) applies.
    """

    def __init__(self, aws_conn_id: str | None, bucket: str, prefix: str, extra_args: Mapping[str, Any]) -> None:
        self.hook = _S3Hook(aws_conn_id=aws_conn_id)
        self.bucket = bucket
        self.prefix = prefix
        self.extra_args = dict(extra_args)
        self.client = self.hook.get_client_type(config=retrying_config(self.hook.config))  # thread-safe: one for all
        self.outage_seconds = outage_seconds()

    @property
    def manifest_key(self) -> str:
        return manifest_key(self.prefix)

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

    def read_json(self, key: str) -> dict[str, Any] | None:
        """A JSON object stored at ``key``; None if there is none or it is not a JSON object."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as err:
            if _error_code(err) in ("NoSuchKey", "404"):
                return None
            raise self._explain("read", key, err) from None
        except BotoCoreError as err:
            raise self._explain("read", key, err) from None
        try:
            document = json.loads(body)
        except ValueError:
            return None
        return document if isinstance(document, dict) else None

    def read_json_many(self, keys: Iterable[str]) -> list[dict[str, Any]]:
        """:meth:`read_json` of many small objects in parallel (receipts), skipping those that are gone."""
        return list(self.read_json_each(keys))

    def read_json_each(self, keys: Iterable[str], chunk: int = 256) -> Iterator[dict[str, Any]]:
        """
        :meth:`read_json_many`, yielded ``chunk`` objects at a time: a caller that folds each as it comes
        never holds 10,000 receipts at once (about 50 MB of dicts).
        """
        keys = list(keys)
        if not keys:
            return
        with ThreadPoolExecutor(min(READ_WORKERS, len(keys)), thread_name_prefix="grok-s3-read") as pool:
            for start in range(0, len(keys), chunk):
                yield from (doc for doc in pool.map(self.read_json, keys[start : start + chunk]) if doc is not None)

    def put_json(self, key: str, document: Mapping[str, Any], *, indent: int | None = None) -> None:
        body = json.dumps(document, indent=indent, ensure_ascii=False).encode()
        self._put(key, body, "application/json", {"generator": GENERATOR})

    def read_manifest(self) -> manifest.Manifest | None:
        """
        The manifest, if there is one of this release's version. Also the cheap pre-flight check of bucket
        and access (a missing bucket or a refused read raises here, before anything is spent).
        """
        return manifest.Manifest.read(self.read_json(self.manifest_key))

    def write_manifest(self, document: Mapping[str, Any]) -> None:
        self._put(self.manifest_key, manifest.encode(document), "application/json", {"generator": GENERATOR})

    def put_image(
        self, key: str, data: bytes, content_type: str, metadata: Mapping[str, Any], *, digest: Any = None
    ) -> str:
        """
        Upload a paid-for image with a SHA-256 that S3 verifies on receipt; return the hex digest.

        Throttling and brief faults are botocore's to retry (:data:`DEFAULT_RETRIES`, or the AWS connection's
        own retry config). When S3 still refuses (credentials expired, a policy change, the endpoint
        gone), the image is kept in memory and tried again with growing pauses for ``[grok]
        s3_outage_seconds`` (default 60) before the GrokStorageError is raised: it was paid for.
        """
        deadline = time.monotonic() + self.outage_seconds
        pause = 1.0
        while True:
            try:
                return self._put(key, data, content_type, metadata, digest)
            except GrokStorageError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(pause, left))  # the last try is at the deadline itself
                pause = min(pause * 2, 10.0)

    def _put(self, key: str, data: bytes, content_type: str, metadata: Mapping[str, Any], digest: Any = None) -> str:
        digest = digest or hashlib.sha256(data)
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

    def list_prefix(self) -> dict[str, int]:
        """Every object under the prefix with its size: one paginated LIST (needs s3:ListBucket)."""
        found: dict[str, int] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + "/"
            ):
                found.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        except (ClientError, BotoCoreError) as err:
            raise self._explain("list", self.prefix + "/", err) from None
        return found

    def head_metadata(self, keys: Iterable[str]) -> dict[str, tuple[int, str, dict[str, str]]]:
        """(size, content type, user metadata) of each of ``keys`` that exists, HEADs in parallel."""

        def head(key: str) -> tuple[str, tuple[int, str, dict[str, str]] | None]:
            try:
                answer = self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as err:
                if _error_code(err) in ("NoSuchKey", "404", "NotFound"):
                    return key, None
                raise self._explain("read", key, err) from None
            except BotoCoreError as err:
                raise self._explain("read", key, err) from None
            return key, (answer["ContentLength"], answer.get("ContentType", ""), answer.get("Metadata", {}))

        keys = list(keys)
        if not keys:
            return {}
        with ThreadPoolExecutor(min(READ_WORKERS, len(keys)), thread_name_prefix="grok-s3-head") as pool:
            return {key: found for key, found in pool.map(head, keys) if found is not None}

    def delete(self, keys: Iterable[str]) -> None:
        """Delete ``keys`` (1000 per request). A failure is not fatal: a leftover receipt is folded again."""
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (ClientError, BotoCoreError):
                return

    def read_object(self, bucket: str, key: str, limit: int) -> bytes:
        """Another object's bytes (an edit's source), refused past ``limit`` bytes."""
        try:
            answer = self.client.get_object(Bucket=bucket, Key=key)
            if answer.get("ContentLength", 0) > limit:
                raise GrokStorageError(f"s3://{bucket}/{key} is larger than the {limit}-byte limit for an image.")
            return bytes(answer["Body"].read())
        except (ClientError, BotoCoreError) as err:
            what = _error_code(err) or type(err).__name__
            raise GrokStorageError(
                f"Could not read the source s3://{bucket}/{key}: {what} (the AWS connection needs s3:GetObject on it)."
            ) from None
