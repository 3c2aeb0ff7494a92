"""
The simulator's ``POST /v1/images/edits``: refuses malformed bodies as xAI does, reads each source (a data
URI, an http(s) URL on loopback, or a file id), and answers with copies of the first source re-tinted per
output, so a test can see the result derives from the bytes it sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_grok import protocol

LOOPBACK = ("127.0.0.1", "localhost", "::1")
TINTS = ((255, 60, 60), (60, 160, 255), (80, 220, 120), (250, 200, 40))
# What a file id stands for here: a small grey PNG, so file-id sources work without a Files API.
FILE_ID_IMAGE_SIZE = (64, 64)


class EditRefused(Exception):
    """A body xAI would refuse with a 400: ``message`` is what it says."""


def read_sources(body: dict[str, Any]) -> list[bytes]:
    """The image bytes of every source in ``body``, or :class:`EditRefused`."""
    if "image" in body and "images" in body:
        raise EditRefused("image and images are mutually exclusive: send one source in image, several in images")
    if "image" in body:
        if not isinstance(body["image"], dict):
            raise EditRefused('image must be an object such as {"url": "...", "type": "image_url"}')
        sources = [body["image"]]
    elif "images" in body:
        if not isinstance(body["images"], list) or not all(isinstance(s, dict) for s in body["images"]):
            raise EditRefused("images must be a list of objects")
        sources = body["images"]
        if not sources:
            raise EditRefused("images must not be empty")
    else:
        raise EditRefused("image or images is required")
    limit = protocol.edits.max_sources(str(body.get("model")))
    if len(sources) > limit:
        raise EditRefused(f"at most {limit} images may be edited together with {body.get('model')}")
    if "aspect_ratio" in body and len(sources) == 1:
        raise EditRefused("aspect_ratio is only supported when editing multiple images")
    return [_read(source, index) for index, source in enumerate(sources)]


def _read(source: dict[str, Any], index: int) -> bytes:
    if set(source) == {"file_id"} and isinstance(source["file_id"], str):
        return _file_image()
    url = source.get("url")
    if source.get("type") != "image_url" or not isinstance(url, str):
        raise EditRefused(f'images[{index}] must be {{"url": ..., "type": "image_url"}} or {{"file_id": ...}}')
    if url.startswith("data:"):
        match = protocol._text.DATA_URI.match(url)
        try:
            data = base64.b64decode(url[match.end() :] if match else "", validate=True)
        except (binascii.Error, ValueError):
            data = b""
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK:
            raise EditRefused(f"images[{index}]: the simulator fetches sources from loopback only, not {url!r}")
        with urllib.request.urlopen(url, timeout=10) as answer:
            data = answer.read()
    if protocol.sniff_image_type(data) is None:
        raise EditRefused(f"images[{index}] could not be decoded as an image")
    return data


def _file_image() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", FILE_ID_IMAGE_SIZE, (128, 128, 128)).save(out, "PNG")
    return out.getvalue()


def retint(source: bytes, index: int, fmt: str) -> bytes:
    """The source blended towards a colour that depends on ``index``: visibly derived, still unique per output."""
    from PIL import Image

    with Image.open(io.BytesIO(source)) as image:
        rgb = image.convert("RGB")
    tinted = Image.blend(rgb, Image.new("RGB", rgb.size, TINTS[index % len(TINTS)]), 0.35)
    out = io.BytesIO()
    tinted.save(out, "JPEG" if fmt == "jpeg" else "PNG", quality=90)
    return out.getvalue()


def describe(sources: list[bytes]) -> list[dict[str, Any]]:
    """What the simulator received, for tests: each source's SHA-256 and size."""
    return [{"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for data in sources]
