"""Run the operator once in this fresh process and print its peak RSS (used by the memory test and benchmarks).

usage: rss_probe.py SIM_READY_FILE S3_ENDPOINT BUCKET PROMPTS
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ready, endpoint, bucket, prompts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp())
    os.environ["AIRFLOW_CONN_GROK_DEFAULT"] = json.loads(Path(ready).read_text())["connection"]
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({"conn_type": "aws", "extra": {"endpoint_url": endpoint}})
    from airflow_provider_grok.operators.grok import GrokGenerateImagesOperator
    from tests.support import RuntimeContext

    op = GrokGenerateImagesOperator(
        task_id="gen",
        prompt=[f"prompt {i}" for i in range(prompts)],
        n=4,
        resolution="2k",
        s3_bucket=bucket,
        s3_key_prefix=f"rss/{uuid.uuid4().hex}",
    )
    xcom = op.execute(RuntimeContext())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "images": len(xcom),
                "stored_mb": sum(x["size_bytes"] for x in xcom) / 1e6,
                "peak_rss_mb": peak_mb,
            }
        )
    )


if __name__ == "__main__":
    main()
