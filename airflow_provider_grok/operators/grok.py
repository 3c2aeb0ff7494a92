"""
The provider's operators, at the path DAGs import them from (``get_provider_info`` lists this module).

:class:`GrokGenerateImagesOperator` (``generate.py``) turns prompts into images in S3;
:class:`GrokEditImagesOperator` (``edit.py``) edits source images the same way.
"""

from airflow_provider_grok.operators.edit import GrokEditImagesOperator
from airflow_provider_grok.operators.generate import GrokGenerateImagesOperator, GrokManifestLink

__all__ = ["GrokEditImagesOperator", "GrokGenerateImagesOperator", "GrokManifestLink"]
