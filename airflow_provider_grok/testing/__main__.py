"""Run the Grok simulator from a shell: ``python -m airflow_provider_grok.testing --help``.

Other processes read its call log and billing, and inject faults and latency, over HTTP on the same
port: ``GET /_simulator/calls``, ``GET /_simulator/billing``, ``POST /_simulator/fail`` and the rest
(``GET /_simulator/help`` lists them), or with ``airflow_provider_grok.testing.SimulatorControl``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from airflow_provider_grok.testing.images import prewarm
from airflow_provider_grok.testing.simulator import DEFAULT_API_KEY, GrokSimulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_grok.testing", description=__doc__)
    parser.add_argument("--dialect", choices=["xai", "openai"], default="xai")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="API port (0: any free port)")
    parser.add_argument("--image-port", type=int, default=0, help="image host port (0: any free port)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per generation")
    parser.add_argument("--max-concurrent", type=int, default=None, help="429 beyond this many in flight")
    parser.add_argument("--image-format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument(
        "--prewarm",
        nargs="*",
        choices=["1k", "2k"],
        default=[],
        help="encode the images of these resolutions before listening (benchmarks: no request pays for it)",
    )
    parser.add_argument("--ready-file", type=Path, help="write the URLs and connection JSON here once listening")
    args = parser.parse_args(argv)

    sim = GrokSimulator(
        dialect=args.dialect,
        api_key=args.api_key,
        latency=args.latency,
        max_concurrent=args.max_concurrent,
        image_format=args.image_format,
        host=args.host,
        port=args.port,
        image_port=args.image_port,
    )
    prewarm(tuple(args.prewarm), args.image_format)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with sim:
        info = {
            "base_url": sim.base_url,
            "image_base_url": sim.image_base_url,
            "control_url": f"{sim.base_url}/_simulator/",
            "connection": sim.connection_json(),
        }
        if args.ready_file:
            # Atomically: a reader polling for the file never sees it empty or half written.
            partial = args.ready_file.with_name(args.ready_file.name + ".partial")
            partial.write_text(json.dumps(info))
            partial.replace(args.ready_file)
        print(f"Grok simulator ({args.dialect}) listening on {sim.base_url}, images on {sim.image_base_url}")
        print(f"Call log, billing and faults over HTTP: {sim.base_url}/_simulator/help")
        print(f"export AIRFLOW_CONN_GROK_DEFAULT='{info['connection']}'", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
