"""
The "Images" page of a task instance, from its manifest: no I/O here (``app.py`` reads the manifest and
streams the images; this module only decides what the page says and which keys may be served).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from airflow_provider_grok.record.manifest import Manifest

# Where the operator records, at the start of every try, where this task instance stores its images.
LOCATION_XCOM_KEY = "grok_images"
URL_PREFIX = "/grok"


def view_path(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The path of a task instance's Images page on the API server (the operator's link points here)."""
    parts = (quote(dag_id, safe=""), quote(run_id, safe=""), quote(task_id, safe=""), str(map_index))
    return f"{URL_PREFIX}/images/" + "/".join(parts)


PAGE_SIZE = 60  # images per page: a 10,000-image task sends the browser one page, never the whole manifest

_STYLE = """
body { font-family: system-ui, -apple-system, sans-serif; margin: 1rem 1.25rem; color: #1f2328; background: #fff; }
h1 { font-size: 1.1rem; margin: 0 0 .4rem; }
.status { display: flex; flex-wrap: wrap; gap: .4rem 1.2rem; font-size: .9rem; margin-bottom: .8rem; }
.status b { font-weight: 600; }
.pill { padding: .05rem .5rem; border-radius: 1rem; font-size: .8rem; font-weight: 600; }
.complete { background: #dafbe1; color: #116329; } .partial, .in_progress { background: #fff8c5; color: #7d4e00; }
.failed { background: #ffebe9; color: #a40e26; } .filtered { background: #eaeef2; color: #424a53; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: .9rem; }
figure { margin: 0; border: 1px solid #d0d7de; border-radius: 6px; overflow: hidden; background: #f6f8fa; }
figure img { width: 100%; aspect-ratio: 1 / 1; object-fit: cover; display: block; background: #eaeef2; }
figcaption { padding: .45rem .6rem; font-size: .8rem; line-height: 1.35; background: #fff; }
.prompt { font-weight: 600; } .revised { color: #57606a; font-style: italic; }
.meta { color: #57606a; font-family: ui-monospace, monospace; font-size: .72rem; word-break: break-all; }
.sources { color: #57606a; font-size: .72rem; margin-top: .25rem; }
table.missing { border-collapse: collapse; margin: .8rem 0; font-size: .85rem; }
table.missing td, table.missing th { border: 1px solid #d0d7de; padding: .3rem .5rem; text-align: left; }
nav.pages { margin: 1rem 0; display: flex; gap: 1rem; font-size: .9rem; }
p.empty { color: #57606a; }
"""


@dataclass(frozen=True)
class Page:
    """One page of a task instance's images: what to show, and which image keys it may serve."""

    number: int
    pages: int
    images: list[dict[str, Any]]
    total: int


def all_images(manifest: Manifest) -> list[dict[str, Any]]:
    """Every stored image, in prompt then image order, each with its prompt record's sources."""
    images = []
    for record in manifest.prompts:
        for image in record.images:
            images.append({**image.to_xcom(), "sources": record.sources, "models": record.models})
    return sorted(images, key=lambda i: (i["prompt_index"], i["image_index"]))


def page_of(manifest: Manifest, number: int, size: int = PAGE_SIZE) -> Page:
    images = all_images(manifest)
    pages = max((len(images) + size - 1) // size, 1)
    number = min(max(number, 1), pages)
    return Page(number, pages, images[(number - 1) * size : number * size], len(images))


def servable_image(manifest: Manifest, key: str) -> dict[str, Any] | None:
    """
    The manifest's record of ``key`` if it may be served: an image this task instance stored, directly under
    its own prefix. Anything else (another prefix, ``..``, a receipt, the manifest) is None.
    """
    prefix = manifest.prefix
    if not prefix or not key.startswith(prefix + "/") or "/" in key[len(prefix) + 1 :] or ".." in key:
        return None
    return next((image for image in all_images(manifest) if image.get("key") == key), None)


def _usd(cost: Mapping[str, Any] | None) -> str:
    if not cost:
        return "unknown"
    text = "unknown" if cost.get("usd") is None else f"${cost['usd']:.4f}"
    unanswered = (cost.get("requests_unanswered") or 0) + (cost.get("attempts_unanswered") or 0)
    if unanswered:
        text += f" + {unanswered} unanswered"
    return text


def _status_line(manifest: Manifest) -> str:
    summary, cost, status = manifest.summary, manifest.cost, manifest.status
    failed = len(summary.get("prompts_failed") or [])
    parts = [
        f'<span class="pill {html.escape(status)}">{html.escape(status)}</span>',
        f"<span><b>{summary.get('images_stored', 0)}</b> stored of {summary.get('images_requested', 0)}</span>",
        f"<span><b>{summary.get('images_reused', 0)}</b> reused</span>",
        f"<span><b>{summary.get('images_filtered', 0)}</b> filtered</span>",
        f"<span><b>{failed}</b> prompts failed</span>",
        f"<span data-cost-try>cost this try <b>{_usd(cost.get('this_try'))}</b></span>",
        f"<span data-cost-all>all tries <b>{_usd(cost)}</b></span>",
        f"<span><b>{cost.get('requests_unanswered', 0)}</b> requests and "
        f"<b>{cost.get('attempts_unanswered', 0)}</b> retried attempts unanswered</span>",
    ]
    return '<div class="status">' + "".join(parts) + "</div>"


def _missing_table(manifest: Manifest) -> str:
    rows = []
    for record in manifest.prompts:
        if record.status in ("failed", "filtered") or record.error:
            reason = record.error or "content moderation returned no images"
            rows.append(
                f"<tr><td>{record.prompt_index}</td><td>{html.escape(str(record.prompt))[:300]}</td>"
                f"<td>{html.escape(str(record.status))}</td><td>{html.escape(str(reason))[:400]}</td></tr>"
            )
    if not rows:
        return ""
    head = "<tr><th>#</th><th>prompt</th><th>status</th><th>reason</th></tr>"
    return f'<table class="missing">{head}{"".join(rows[:200])}</table>'


def _figure(image: Mapping[str, Any], file_url: str) -> str:
    href = f"{file_url}/{quote(str(image['key']), safe='/')}"
    revised = image.get("revised_prompt")
    sources = "".join(
        f"<div>{html.escape(str(s.get('uri') or 'inline image'))} ({s.get('size') or '?'} bytes)</div>"
        for s in image.get("sources") or []
    )
    size = int(image.get("size_bytes") or 0)
    prompt = html.escape(str(image.get("prompt", "")))
    return (
        f'<figure><a href="{href}" target="_blank" rel="noopener"><img src="{href}" alt="{prompt}" loading="lazy">'
        f'</a><figcaption><div class="prompt">{prompt}</div>'
        + (f'<div class="revised">{html.escape(revised)}</div>' if revised else "")
        + f'<div class="meta">{html.escape(str(image.get("model") or ""))} &middot; {size / 1e3:.0f} kB &middot; '
        f"{html.escape(str(image.get('content_type', '')))}<br>{html.escape(str(image.get('s3_uri', '')))}</div>"
        + (f'<div class="sources">edited from: {sources}</div>' if sources else "")
        + "</figcaption></figure>"
    )


def render_page(manifest: Manifest, page: Page, *, title: str, base_url: str) -> str:
    """The page: status line, what is missing and why, one page of thumbnails, links to the other pages."""
    figures = "\n".join(_figure(image, f"{base_url}/file") for image in page.images)
    nav = ""
    if page.pages > 1:
        links = []
        if page.number > 1:
            links.append(f'<a href="{base_url}?page={page.number - 1}">&larr; previous</a>')
        links.append(f"<span>page {page.number} of {page.pages} ({page.total} images)</span>")
        if page.number < page.pages:
            links.append(f'<a href="{base_url}?page={page.number + 1}">next &rarr;</a>')
        nav = f'<nav class="pages">{"".join(links)}</nav>'
    empty = "" if page.images else '<p class="empty">No image of this task instance is stored.</p>'
    return _document(
        title, f'{_status_line(manifest)}{_missing_table(manifest)}{nav}<div class="grid">{figures}</div>{empty}{nav}'
    )


def render_no_manifest(title: str, reason: str) -> str:
    return _document(title, f'<p class="empty">{html.escape(reason)}</p>')


def _document(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
