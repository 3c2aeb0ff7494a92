"""Apache Airflow provider for Grok Imagine image generation.

Kept import-light on purpose: Airflow imports provider packages during DAG parsing and
provider discovery, so nothing here may pull in Airflow, HTTP clients or boto3.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
