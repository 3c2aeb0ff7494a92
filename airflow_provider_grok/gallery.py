"""An HTML contact sheet of generated images, from the operator's manifests (used by the example DAG)."""

from __future__ import annotations

import html
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_grok.record.manifest import Manifest

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; background: #fafafa; color: #222; }}
h1 {{ font-size: 1.4rem; }} p.summary {{ color: #555; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 1.2rem; }}
figure {{ margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; overflow: hidden; }}
figure img {{ width: 100%; display: block; background: #eee; }}
figcaption {{ padding: .6rem .8rem; font-size: .85rem; line-height: 1.4; }}
.prompt {{ font-weight: 600; }} .revised {{ color: #555; font-style: italic; }}
.meta {{ color: #777; font-family: ui-monospace, monospace; font-size: .75rem; word-break: break-all; }}
</style></head>
<body><h1>{title}</h1><p class="summary">{summary}</p>
<div class="grid">
{figures}
</div></body></html>
"""

_FIGURE = """<figure><a href="{href}"><img src="{href}" alt="{alt}" loading="lazy"></a><figcaption>
<div class="prompt">{prompt}</div>{revised}
<div class="meta">{size} &middot; {content_type}<br>{s3_uri}</div></figcaption></figure>"""


def _human_size(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def _read(manifests: Iterable[Manifest | Mapping[str, Any]]) -> list[Manifest]:
    """Manifests as stored (parsed JSON) or already read; one of another version is left out."""
    read = [m if isinstance(m, Manifest) else Manifest.read(m) for m in manifests]
    return [m for m in read if m is not None]


def render_gallery(manifests: Iterable[Manifest | Mapping[str, Any]], *, base_prefix: str, title: str) -> str:
    """
    One page showing every stored image of ``manifests`` with its prompt, revised prompt, size and S3 URI.

    Image links are relative to ``base_prefix`` (where the page is stored), so the page works in S3 and
    in a local copy of the same folder.
    """
    figures, cost, count = [], 0.0, 0
    for manifest in _read(manifests):
        cost += manifest.cost_usd or 0.0
        for image in manifest.images():
            count += 1
            href = image.key.removeprefix(base_prefix.rstrip("/") + "/")
            revised = image.revised_prompt
            figures.append(
                _FIGURE.format(
                    href=html.escape(href),
                    alt=html.escape(image.prompt),
                    prompt=html.escape(image.prompt),
                    revised=f'<div class="revised">{html.escape(revised)}</div>' if revised else "",
                    size=_human_size(image.size_bytes),
                    content_type=html.escape(image.content_type),
                    s3_uri=html.escape(image.s3_uri),
                )
            )
    summary = f"{count} images" + (f", ${cost:.2f}" if cost else "")
    return _PAGE.format(title=html.escape(title), summary=summary, figures="\n".join(figures))


_PAIR = """<figure><div class="pair"><a href="{before}"><img src="{before}" alt="before" loading="lazy"></a>
<a href="{after}"><img src="{after}" alt="{alt}" loading="lazy"></a></div><figcaption>
<div class="prompt">{prompt}</div><div class="meta">{before_uri} &rarr; {after_uri}</div></figcaption></figure>"""


def render_before_after(manifests: Iterable[Manifest | Mapping[str, Any]], *, base_prefix: str, title: str) -> str:
    """
    One page showing each edit's first source beside each of its results, from GrokEditImagesOperator
    manifests. Links are relative to ``base_prefix`` where they live under it, absolute s3:// otherwise.
    """

    def href(uri: str) -> str:
        if not uri.startswith("s3://"):
            return uri
        return posixpath.relpath(uri.split("/", 3)[3], base_prefix.rstrip("/"))  # the page sits in base_prefix

    figures = []
    for manifest in _read(manifests):
        for record in manifest.prompts:
            sources = record.sources or [{"uri": ""}]
            for image in sorted(record.images, key=lambda i: i.image_index):
                figures.append(
                    _PAIR.format(
                        before=html.escape(href(sources[0]["uri"])),
                        after=html.escape(href(image.s3_uri)),
                        alt=html.escape(image.prompt),
                        prompt=html.escape(image.prompt),
                        before_uri=html.escape(sources[0]["uri"]),
                        after_uri=html.escape(image.s3_uri),
                    )
                )
    page = _PAGE.format(title=html.escape(title), summary=f"{len(figures)} edits", figures="\n".join(figures))
    return page.replace("</style>", ".pair { display: grid; grid-template-columns: 1fr 1fr; }\n</style>")
