"""`make demo`: generate images with GrokHook from the built-in simulator into ./demo-output/."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

OUTPUT = Path("demo-output")
PROMPTS = ["A lighthouse on a cliff at dawn, oil painting", "A koi fish swimming through a nebula"]


def main() -> int:
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="grok-demo-airflow-"))
    from airflow_provider_grok import api
    from airflow_provider_grok.hooks.grok import GrokHook
    from airflow_provider_grok.testing import GrokSimulator

    OUTPUT.mkdir(exist_ok=True)
    with GrokSimulator(latency=0.5) as sim:
        os.environ["AIRFLOW_CONN_GROK_DEFAULT"] = sim.connection_json()
        hook = GrokHook()
        for p, prompt in enumerate(PROMPTS):
            result = hook.generate_images(prompt, n=2, aspect_ratio="16:9", response_format="b64_json")
            for image in result.images:
                data = hook.fetch_image(image)
                kind = api.sniff_image_type(data)
                assert kind is not None
                path = OUTPUT / f"{p}-{image.index}.{kind.extension}"
                path.write_bytes(data)
                print(f"{path}  {len(data):>9,} bytes  {prompt}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
