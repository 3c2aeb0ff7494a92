"""A real headless Chromium (Debian's, driven by Playwright) on the deployment's UI, as a person uses it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

# Where screenshots land: open them and look (the README's picture of the Images view is one of them).
OUTPUT = Path(__file__).resolve().parents[2] / "e2e-output"
# Offline here: no component updates, sync or background requests to hosts this machine cannot reach.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "make e2e needs Debian's chromium (the Makefile installs it with apt-get when it is missing)"
    return path


@contextmanager
def logged_in(api: str, username: str, password: str) -> Iterator[Any]:
    """A browser page logged in through the simple auth manager's own form."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{api}/")
            page.get_by_label("Username").fill(username)
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url)
            yield page
        finally:
            browser.close()


def open_images_tab(page: Any, api: str, *, dag_id: str, run_id: str, task_id: str, map_index: int) -> Any:
    """Open a task instance's page, click its "Images" tab; return the tab's frame once its grid is there."""
    path = f"/dags/{dag_id}/runs/{quote(run_id, safe='')}/tasks/{task_id}"
    page.goto(api + path + (f"/mapped/{map_index}" if map_index >= 0 else ""))
    page.get_by_role("tab", name="Images").or_(page.get_by_role("link", name="Images")).first.click()
    frame = page.frame_locator("iframe").first
    frame.locator("div.status").wait_for()
    return frame


def images_loaded(frame: Any) -> list[int]:
    """Scroll every thumbnail into view (they load lazily) and return their natural widths once loaded."""
    images = frame.locator("figure img")
    widths = []
    for index in range(images.count()):
        image = images.nth(index)
        image.scroll_into_view_if_needed()
        image.evaluate("img => img.complete ? null : new Promise(done => { img.onload = img.onerror = done; })")
        widths.append(int(image.evaluate("img => img.naturalWidth")))
    return widths
