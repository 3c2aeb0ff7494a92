"""GrokHook.edit_images and its async twin, over real sockets to the simulator's /v1/images/edits."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from PIL import Image

from airflow_provider_grok.exceptions import GrokBadRequestError, GrokValidationError
from airflow_provider_grok.hooks.grok import GrokAsyncHook, GrokHook
from airflow_provider_grok.testing import GrokSimulator


def png(color: tuple[int, int, int] = (10, 200, 30), size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def hook(make_conn, sim: GrokSimulator, **extra) -> GrokHook:
    return GrokHook(make_conn(sim, **extra), retry_backoff=0.01)


def edit_bodies(sim: GrokSimulator) -> list[dict]:
    return [c.body for c in sim.calls if c.path == "/v1/images/edits"]


def test_bytes_are_sent_inline_and_the_answer_derives_from_them(xai_sim, make_conn):
    source = png()
    h = hook(make_conn, xai_sim)
    result = h.edit_images("Make it a watercolour", [source], n=2, response_format="b64_json")

    (body,) = edit_bodies(xai_sim)
    assert body["image"]["type"] == "image_url" and body["image"]["url"].startswith("data:image/png;base64,")
    assert "images" not in body and "aspect_ratio" not in body
    assert xai_sim.edits[0]["sources"] == [{"sha256": hashlib.sha256(source).hexdigest(), "size": len(source)}]
    assert len(result.images) == 2 and result.usage == {"cost_in_usd_ticks": 3 * 200_000_000}  # 1 in + 2 out
    first, second = (h.fetch_image(image) for image in result.images)
    assert first.image_type.mime_type == "image/jpeg" and first != second
    with Image.open(io.BytesIO(first)) as edited:
        assert edited.size == (96, 64)  # the source's shape: the output derives from it


def test_url_data_uri_and_file_id_sources(xai_sim, make_conn):
    h = hook(make_conn, xai_sim)
    generated = h.generate_images("a vase", response_format="url").images[0]
    fetched_before = len(xai_sim.image_requests)
    data_uri = "data:image/png;base64," + base64.b64encode(png((200, 10, 10))).decode()
    result = h.edit_images(
        "Put <IMAGE_0> on <IMAGE_1>, lit like <IMAGE_2>",
        [generated.url, data_uri, {"file_id": "file-123"}],
        aspect_ratio="16:9",
    )

    (body,) = edit_bodies(xai_sim)
    assert [s.get("url") or s.get("file_id") for s in body["images"]] == [generated.url, data_uri, "file-123"]
    assert body["aspect_ratio"] == "16:9" and "image" not in body
    assert len(xai_sim.image_requests) == fetched_before + 1  # the simulator fetched the URL source itself
    assert len(xai_sim.edits[0]["sources"]) == 3 and len(result.images) == 1


@pytest.mark.parametrize(
    ("images", "options", "words"),
    [
        ([], {}, "Invalid images='<0 sources>': expected 1 to 3 sources"),
        ([png()] * 4, {}, "expected 1 to 3 sources for grok-imagine-image"),
        ([png()] * 6, {"model": "grok-imagine-image-2.0"}, "expected 1 to 5 sources for grok-imagine-image-2.0"),
        ([b"GIF89a not ours"], {}, "Invalid images[0]='<15 bytes>': expected the bytes of a JPEG, PNG or WebP"),
        (["data:image/png;base64,bm90IGFuIGltYWdl"], {}, "Invalid images[0]="),
        (["ftp://example.com/a.png"], {}, "expected image bytes, an http(s) URL"),
        ([png()], {"aspect_ratio": "16:9"}, "applies only with several sources"),
        ("https://example.com/a.png", {}, "expected a list of sources"),
    ],
)
def test_bad_edits_are_refused_before_any_call(xai_sim, make_conn, images, options, words):
    with pytest.raises(GrokValidationError) as err:
        hook(make_conn, xai_sim).edit_images("restyle", images, **options)
    assert words in str(err.value)
    assert xai_sim.calls == []


def test_a_prompt_naming_a_missing_source_is_refused(xai_sim, make_conn):
    with pytest.raises(GrokValidationError, match="names <IMAGE_3> but there are 3 sources"):
        hook(make_conn, xai_sim).edit_images("Blend <IMAGE_0> and <IMAGE_3>", [png()] * 3)
    assert xai_sim.calls == []


def test_the_simulator_refuses_malformed_bodies_as_xai_does(xai_sim):
    import requests

    def post(body: dict) -> requests.Response:
        headers = {"Authorization": f"Bearer {xai_sim.api_key}"}
        return requests.post(f"{xai_sim.base_url}/v1/images/edits", json=body, headers=headers, timeout=10)

    base = {"model": "grok-imagine-image", "prompt": "x"}
    source = {"url": "data:image/png;base64," + base64.b64encode(png()).decode(), "type": "image_url"}
    assert "must be an object" in post({**base, "image": source["url"]}).text
    assert "mutually exclusive" in post({**base, "image": source, "images": [source]}).text
    assert "at most 3" in post({**base, "images": [source] * 4}).text
    not_an_image = {"url": "data:image/png;base64,bm9wZQ==", "type": "image_url"}
    assert "could not be decoded" in post({**base, "image": not_an_image}).text
    assert post({**base, "image": source}).status_code == 200


def test_an_openai_style_gateway_without_json_edits_gets_a_clear_hint(make_conn):
    with GrokSimulator(dialect="openai") as sim:
        h = hook(make_conn, sim, model="grok-imagine")
        with pytest.raises(GrokBadRequestError, match="may not support xAI's JSON image edits"):
            h.edit_images("restyle", [png()])


def test_many_outputs_are_split_by_ten(xai_sim, make_conn):
    result = hook(make_conn, xai_sim).edit_images("restyle", [png()], n=12)
    assert sorted(b["n"] for b in edit_bodies(xai_sim)) == [2, 10]
    assert [i.index for i in result.images] == list(range(12))


async def test_the_async_hook_edits_the_same_way(xai_sim, make_conn):
    async_hook = GrokAsyncHook(make_conn(xai_sim))
    try:
        result = await async_hook.edit_images("restyle", [png()], response_format="b64_json")
    finally:
        await async_hook.aclose()
    assert len(result.images) == 1 and edit_bodies(xai_sim)[0]["image"]["url"].startswith("data:image/png")
