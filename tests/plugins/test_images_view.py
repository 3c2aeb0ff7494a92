"""
The Images view: Airflow's real API app (plugins, auth manager, JWT) in process, real DAG runs (dag.test())
against the simulator, and the images read from a moto S3 server over HTTP. The browser test of the same
page is in ``make e2e``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from airflow_provider_grok.plugins.view import PAGE_SIZE, page_of, servable_image
from airflow_provider_grok.record import Manifest
from tests.support import dag_source

PASSWORDS = {"viewer": "viewer-pw-1", "admin": "admin-pw-1"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, airflow_db: None) -> Iterator[Any]:
    """The API server's app with the simple auth manager's real users (not "all admins")."""
    import os

    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    passwords = tmp_path_factory.mktemp("auth") / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    env = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "viewer:viewer,admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": "grok-tests-" + "s" * 60,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    purge_cached_app()
    try:
        yield TestClient(create_app())
    finally:
        purge_cached_app()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def token(client: Any, user: str = "viewer") -> dict[str, str]:
    answer = client.post("/auth/token", json={"username": user, "password": PASSWORDS[user]})
    assert answer.status_code == 201, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def view(dag_id: str, run_id: str, task_id: str, map_index: int | str = -1) -> str:
    return f"/grok/images/{dag_id}/{quote(run_id, safe='')}/{task_id}/{map_index}"


@pytest.fixture
def generated(grok_simulator, s3, dag_runner) -> Any:
    """A finished run: one unmapped task of 3 prompts (one filtered by moderation) and a mapped task."""
    grok_simulator.moderate(keep=0, times=1, prompt_contains="forbidden")
    source = dag_source(f"""
GrokGenerateImagesOperator(
    task_id="gen", prompt=["a red fox", "a forbidden owl", "a hare"], s3_bucket="{s3.bucket}", max_concurrency=1,
)
GrokGenerateImagesOperator.partial(task_id="mapped", s3_bucket="{s3.bucket}").expand(prompt=["a kite", "a boat"])
""")
    result = dag_runner.run(source)
    assert result.state == "success"
    return result


def test_every_route_needs_airflows_auth(client, generated) -> None:
    page = view(generated.dag_id, generated.run_id, "gen")
    for path in (page, f"{page}/file/anything.jpg"):
        assert client.get(path).status_code == 401  # no token, no cookie: nothing
        assert client.get(path, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
        assert client.get(path, cookies={"_token": "forged"}).status_code == 403


def test_the_page_shows_the_status_every_image_and_what_is_missing(client, generated, s3) -> None:
    answer = client.get(view(generated.dag_id, generated.run_id, "gen", "{MAP_INDEX}"), headers=token(client))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    page = answer.text
    manifest = next(
        s3.manifest(k.removesuffix("/manifest.json")) for k in s3.object_keys() if k.endswith("/gen/manifest.json")
    )
    # The prompt moderation removed reported no cost, so the manifest (and the page) say "unknown", never 0.
    assert manifest["cost"]["usd"] is None
    assert "all tries <b>unknown</b>" in page and "cost this try <b>unknown</b>" in page
    assert "<b>2</b> stored of 3" in page and "<b>1</b> filtered" in page
    assert "a red fox" in page and "a hare" in page
    assert re.search(r"<td>1</td><td>a forbidden owl</td><td>filtered</td>", page)  # the filtered one, and why
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 2

    # Each thumbnail is served through the API server with its type and an ETag of its stored SHA-256.
    base = view(generated.dag_id, generated.run_id, "gen").rsplit("/", 1)[0]
    for src in sources:
        image = client.get(f"{base}/{src.removeprefix('./')}", headers=token(client))
        assert image.status_code == 200, image.text
        assert image.headers["content-type"] == "image/jpeg"
        key = src.split("/file/", 1)[1]
        assert image.content == s3.get(key)
        assert image.headers["etag"] == f'"{hashlib.sha256(image.content).hexdigest()}"'
        cached = {**token(client), "If-None-Match": image.headers["etag"]}
        again = client.get(f"{base}/{src.removeprefix('./')}", headers=cached)
        assert again.status_code == 304 and not again.content


def test_a_mapped_task_instance_has_its_own_page(client, generated) -> None:
    first = client.get(view(generated.dag_id, generated.run_id, "mapped", 1), headers=token(client)).text
    assert "a boat" in first and "a kite" not in first


def test_only_this_task_instances_images_can_be_served(client, generated, s3) -> None:
    page = view(generated.dag_id, generated.run_id, "gen")
    keys = s3.object_keys()
    gen_prefix = next(k for k in keys if k.endswith("/gen/manifest.json")).removesuffix("/manifest.json")
    other = next(k for k in keys if "/mapped/" in k and k.endswith(".jpg"))
    for key in (
        f"{gen_prefix}/manifest.json",  # not an image
        other,  # another task instance's image, in the same bucket
        f"{gen_prefix}/../mapped/map-0/0-0.jpg",  # path tricks
        f"{gen_prefix}/1-0.jpg",  # the filtered prompt's: never stored
        "etc/passwd",
    ):
        assert client.get(f"{page}/file/{key}", headers=token(client)).status_code == 404, key


def test_a_task_instance_without_a_manifest_gets_a_sentence(client, generated) -> None:
    answer = client.get(view(generated.dag_id, generated.run_id, "not_a_grok_task"), headers=token(client))
    assert answer.status_code == 200
    assert "not run yet, or it is not a Grok task" in answer.text


def big_manifest(images: int) -> dict[str, Any]:
    """A manifest of this release's version with ``images`` prompts of one image each, under prefix ``p``."""
    image = {"key": "", "s3_uri": "", "content_type": "image/jpeg", "size_bytes": 1, "sha256": "0" * 64}
    prompts = [
        {
            "prompt_index": i,
            "prompt": f"prompt {i}",
            "fingerprint": "f",
            "requested": 1,
            "status": "complete",
            "images": [{**image, "key": f"p/{i}-0.jpg", "prompt": f"prompt {i}", "prompt_index": i, "image_index": 0}],
        }
        for i in range(images)
    ]
    return {"manifest_version": 2, "prefix": "p", "status": "complete", "summary": {}, "cost": {}, "prompts": prompts}


def test_paging_sends_one_page_whatever_the_size_of_the_manifest() -> None:
    manifest = Manifest.read(big_manifest(10_000))
    assert manifest is not None
    first, last = page_of(manifest, 1), page_of(manifest, 10_000)
    assert len(first.images) == PAGE_SIZE and first.pages == -(-10_000 // PAGE_SIZE)
    assert last.number == last.pages and last.images[-1]["key"] == "p/9999-0.jpg"
    assert servable_image(manifest, "p/9999-0.jpg") is not None
    assert servable_image(manifest, "p/sub/1-0.jpg") is None


@pytest.mark.parametrize("images", [100, 10_000])
def test_a_large_task_renders_its_first_page_small_and_fast(client, generated, s3, images) -> None:
    gen_prefix = next(k for k in s3.object_keys() if k.endswith("/gen/manifest.json")).removesuffix("/manifest.json")
    manifest = {**s3.manifest(gen_prefix), **big_manifest(images), "prefix": gen_prefix}
    body = json.dumps(manifest).encode()
    s3.client.put_object(Bucket=s3.bucket, Key=f"{gen_prefix}/manifest.json", Body=body)
    headers = token(client)
    page = view(generated.dag_id, generated.run_id, "gen")
    started = time.perf_counter()
    first = client.get(page, headers=headers)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    second = client.get(f"{page}?page=2", headers=headers)
    warm = time.perf_counter() - started
    assert first.status_code == second.status_code == 200
    pages = -(-images // PAGE_SIZE)
    assert first.text.count("<figure>") == PAGE_SIZE and f"page 1 of {pages} ({images} images)" in first.text
    assert len(first.content) < 100_000  # one page, never the whole manifest
    print(
        f"\n{images} images (manifest {len(body)} bytes): first page {len(first.content)} bytes in {cold:.3f} s "
        f"(manifest read and parsed), page 2 in {warm:.3f} s (manifest cached by ETag)"
    )
