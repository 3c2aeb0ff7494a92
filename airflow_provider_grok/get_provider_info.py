"""Provider metadata Airflow reads through the ``apache_airflow_provider`` entry point.

The connection form is declared here (``conn-fields`` / ``ui-field-behaviour``): Airflow 3.2+ builds
the UI from this without importing the hook, and ignores the old hook form methods.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_grok import __version__

PACKAGE_NAME = "airflow-provider-grok"  # must equal the distribution's canonical name
_INTEGRATION = "Grok Imagine"


def _field(label: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": schema}


def get_provider_info() -> dict[str, Any]:
    from airflow_provider_grok.protocol import DEFAULT_MAX_RETRIES, DEFAULT_MODEL, DEFAULT_READ_TIMEOUT

    return {
        "package-name": PACKAGE_NAME,
        "name": "Grok Imagine",
        "description": "Generate images with xAI Grok Imagine (direct or via OpenAI-compatible gateways) "
        "and store them in S3.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://docs.x.ai/docs/guides/image-generations",
                "tags": ["ai"],
            }
        ],
        "hooks": [{"integration-name": _INTEGRATION, "python-modules": ["airflow_provider_grok.hooks.grok"]}],
        "operators": [{"integration-name": _INTEGRATION, "python-modules": ["airflow_provider_grok.operators.grok"]}],
        "connection-types": [
            {
                "connection-type": "grok",
                "hook-class-name": "airflow_provider_grok.hooks.grok.GrokHook",
                "hook-name": "Grok Imagine",
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "schema", "port"],
                    "relabeling": {"host": "Gateway base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://api.x.ai (or your gateway, with or without /v1)",
                        "password": "xai-...",
                    },
                },
                "conn-fields": {
                    "model": _field(
                        "Default model",
                        "Model used when a task does not name one, e.g. grok-imagine-image, "
                        "grok-imagine-image-quality, or a gateway's own name such as grok-imagine.",
                        {"type": ["string", "null"], "default": DEFAULT_MODEL},
                    ),
                    "timeout": _field(
                        "Read timeout (s)",
                        "Seconds to wait for one generation response. 2k images take 60-80 s on the "
                        "newest models; keep this at several minutes.",
                        {"type": ["number", "null"], "default": DEFAULT_READ_TIMEOUT, "minimum": 1},
                    ),
                    "max_retries": _field(
                        "Max retries",
                        "Retries after 408/409/429/5xx or a dropped connection. A retried generation may "
                        "be billed again; 0 disables retries.",
                        {"type": ["integer", "null"], "default": DEFAULT_MAX_RETRIES, "minimum": 0},
                    ),
                    "requests_per_second": _field(
                        "Requests per second",
                        "Cap on generation requests started per second, spaced evenly: per task, or for "
                        "the whole deployment when a Redis connection is set below (xAI allows 5/s on "
                        "grok-imagine-image). Empty or 0 for no cap.",
                        {"type": ["number", "null"], "default": None, "minimum": 0},
                    ),
                    "extra_headers": _field(
                        "Extra headers (JSON)",
                        'Headers added to every API request (never to image downloads), e.g. {"X-Org": "a"}. '
                        "Authorization is not allowed here: the API key goes in the password field.",
                        {"type": ["object", "null"], "default": None, "format": "json"},
                    ),
                    "redis_conn_id": _field(
                        "Redis connection (shared budget)",
                        "An Airflow redis connection id. When set, requests per second and a 429's pause hold "
                        "for every worker and triggerer using this gateway and key (needs the [fleet] extra).",
                        {"type": ["string", "null"], "default": None},
                    ),
                },
            }
        ],
    }
