"""Image bytes: what type they are (by their magic numbers), inline base64, which URLs may be fetched."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import urlsplit

from airflow_provider_grok.exceptions import GrokImageDownloadError
from airflow_provider_grok.protocol._text import DATA_URI, shown

DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class ImageType:
    mime_type: str
    extension: str


_SIGNATURES = (
    (b"\xff\xd8\xff", ImageType("image/jpeg", "jpg")),
    (b"\x89PNG\r\n\x1a\n", ImageType("image/png", "png")),
)
_WEBP = ImageType("image/webp", "webp")


def sniff_image_type(data: bytes) -> ImageType | None:
    """JPEG, PNG or WebP from the magic bytes; None for anything else."""
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            return kind
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _WEBP
    return None


def verify_image(data: bytes, source: str) -> ImageType:
    """The image type of ``data``, or :class:`GrokImageDownloadError` if it is not JPEG, PNG or WebP."""
    kind = sniff_image_type(data)
    if kind is None:
        raise GrokImageDownloadError(
            f"{source} is not a JPEG, PNG or WebP image ({len(data)} bytes starting with {data[:16]!r})."
        )
    return kind


def decode_b64_image(b64: str, source: str, limit: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """Decode an inline image (a ``data:`` prefix is tolerated), capped at ``limit`` bytes, verified an image."""
    if match := DATA_URI.match(b64):
        b64 = b64[match.end() :]
    if len(b64) * 3 // 4 > limit:  # known before decoding: never allocate an oversized image
        raise too_large_error(source, limit, len(b64) * 3 // 4)
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        try:  # line-wrapped base64 is valid too; removing whitespace only when needed saves a scan of MBs
            data = base64.b64decode("".join(b64.split()), validate=True)
        except (binascii.Error, ValueError) as err:
            raise GrokImageDownloadError(f"{source} has b64_json that is not valid base64 ({err}).") from None
    verify_image(data, source)
    return data


def check_download_url(url: str, source: str) -> None:
    """Only http(s) URLs are fetched; anything else (file:, ftp:, data:) is refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise GrokImageDownloadError(f"{source} has URL {shown(url)}, which is not http(s); refusing to fetch it.")


def too_large_error(source: str, limit: int, size: int | None = None) -> GrokImageDownloadError:
    got = f" ({size} bytes)" if size is not None else ""
    return GrokImageDownloadError(
        f"{source} is larger than the {limit}-byte limit{got}; raise max_image_bytes on the hook if expected."
    )
