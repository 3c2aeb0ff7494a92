"""Real JPEG/PNG images of a requested shape, each one unique, for the simulator.

Drawing and encoding a 2k image costs about 0.1 s, so one base image is encoded per
(width, height, format) and every served image is that file with a unique comment inserted:
still a valid image, with distinct bytes (and so a distinct sha256) per image.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import zlib

from airflow_provider_grok.protocol import ASPECT_RATIOS

MEGAPIXELS = {"1k": 1024 * 1024, "1.5k": 1536 * 1536, "2k": 2048 * 2048}
FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}
# Noise strength that gives realistic file sizes: about 0.35 MB at 1k and 1.5 MB at 2k as JPEG.
NOISE_SIGMA = 35
# A prompt picks one of these looks, so a gallery shows different pictures while the encode cache stays small.
PALETTE = (
    ((255, 200, 0), (0, 1, 2)),
    ((0, 220, 255), (2, 1, 0)),
    ((255, 80, 160), (1, 2, 0)),
    ((120, 255, 120), (0, 2, 1)),
    ((255, 255, 255), (2, 0, 1)),
    ((255, 120, 0), (1, 0, 2)),
)


def image_dimensions(aspect_ratio: str | None, resolution: str | None, size: str | None) -> tuple[int, int]:
    """Pixel size for the request: ``size`` exactly, else ``resolution`` megapixels at ``aspect_ratio``."""
    if size:
        width_text, height_text = size.split("x")
        return int(width_text), int(height_text)
    pixels = MEGAPIXELS[resolution or "1k"]
    ratio = 1.0
    if aspect_ratio and aspect_ratio != "auto":
        assert aspect_ratio in ASPECT_RATIOS
        a, b = aspect_ratio.split(":")
        ratio = float(a) / float(b)
    width = round(math.sqrt(pixels * ratio) / 16) * 16
    height = round(math.sqrt(pixels / ratio) / 16) * 16
    return width, height


@functools.lru_cache(maxsize=64)
def base_image(width: int, height: int, fmt: str, look: int = 0) -> bytes:
    try:
        from PIL import Image, ImageDraw
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "The Grok simulator draws images with Pillow: pip install 'airflow-provider-grok[simulator]'"
        ) from err
    noise = Image.effect_noise((max(width // 2, 1), max(height // 2, 1)), NOISE_SIGMA).resize((width, height))
    gradient = Image.linear_gradient("L").resize((width, height))
    outline, order = PALETTE[look % len(PALETTE)]
    bands = (gradient, noise, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    picture = Image.merge("RGB", tuple(bands[i] for i in order))
    ImageDraw.Draw(picture).ellipse(
        (width // 4, height // 4, 3 * width // 4, 3 * height // 4), outline=outline, width=max(width // 100, 4)
    )
    out = io.BytesIO()
    if fmt == "jpeg":
        picture.save(out, "JPEG", quality=85)
    else:
        picture.save(out, "PNG", compress_level=1)
    return out.getvalue()


def unique_image(width: int, height: int, fmt: str, label: str, look: int = 0) -> bytes:
    """The base image in ``look`` with ``label`` embedded (JPEG COM segment or PNG tEXt chunk)."""
    data = base_image(width, height, fmt, look)
    text = label.encode("ascii", "replace")[:60000]
    if fmt == "jpeg":
        segment = b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text
        return data[:2] + segment + data[2:]  # right after SOI
    chunk_body = b"tEXt" + b"Comment\x00" + text
    chunk = struct.pack(">I", len(chunk_body) - 4) + chunk_body + struct.pack(">I", zlib.crc32(chunk_body))
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def prewarm(resolutions: tuple[str, ...], fmt: str = "jpeg") -> None:
    """Encode every look at the default shape of ``resolutions`` now, so no request pays for it later."""
    for resolution in resolutions:
        width, height = image_dimensions(None, resolution, None)
        for look in range(len(PALETTE)):
            base_image(width, height, fmt, look)
