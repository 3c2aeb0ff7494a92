"""
S3 I/O only: :class:`S3ImageStore` moves a task instance's objects, :class:`RequestLedger` writes the durable
writes of each request in the order ``record/lifecycle.py`` gives. Imported at run time only: it pulls in boto3.
"""

from airflow_provider_grok.storage.ledger import RequestLedger, read_plan, write_plan
from airflow_provider_grok.storage.s3 import ALLOWED_S3_EXTRA_ARGS, S3ImageStore

__all__ = ["ALLOWED_S3_EXTRA_ARGS", "RequestLedger", "S3ImageStore", "read_plan", "write_plan"]
