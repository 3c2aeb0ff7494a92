"""The manifest's bytes: JSON that reads back as written, one prompt or request per line."""

from __future__ import annotations

import json

from airflow_provider_grok.storage.s3 import manifest_bytes


def test_the_manifest_is_json_with_one_item_per_line() -> None:
    manifest = {
        "manifest_version": 2,
        "status": "complete",
        "prompts": [{"prompt": "un café, s'il vous plaît", "images": [{"key": "p/0-0.png"}]}, {"prompt": "b"}],
        "requests": [],
        "cost": {"usd": None, "by_try": {"1": {"requests": 1}}},
    }
    body = manifest_bytes(manifest)
    assert json.loads(body) == manifest
    lines = body.decode().splitlines()
    assert '    {"prompt": "un café, s\'il vous plaît", "images": [{"key": "p/0-0.png"}]},' in lines
    assert '  "requests": [],' in lines
