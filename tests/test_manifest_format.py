"""The manifest's bytes: JSON that reads back as written, one prompt or request per line."""

from __future__ import annotations

import json

from airflow_provider_grok.record.manifest import encode as manifest_bytes


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


def test_lazily_converted_items_encode_exactly_as_a_list() -> None:
    from airflow_provider_grok.record.manifest import JsonItems

    records = [{"prompt_index": i, "prompt": f"p{i}"} for i in range(3)]
    lazy = JsonItems(records, lambda r: {**r, "converted": True})
    eager = [{**r, "converted": True} for r in records]

    assert manifest_bytes({"prompts": lazy, "requests": JsonItems([], dict)}) == manifest_bytes(
        {"prompts": eager, "requests": []}
    )
    assert list(lazy) == eager and lazy[1] == eager[1] and lazy[1:] == eager[1:] and len(lazy) == 3
