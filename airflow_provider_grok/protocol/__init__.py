"""
The Grok Imagine protocol, sans-IO: no Airflow, no HTTP library, no threads, clocks or randomness.

One idea per module: ``params`` (the generation parameters, declared once), ``settings`` (a connection
and the ``/v1`` rule), ``responses`` (reading an answer), ``errors`` (reading an error), ``retry`` (when
and how long), ``images`` (image bytes), and at the heart ``machine``: one request through its retries,
which the sync hook, the async hook and image downloads all drive. The transports only move bytes and sleep.
"""

from __future__ import annotations

from airflow_provider_grok.protocol._text import header, redact, request_id_from_headers
from airflow_provider_grok.protocol.errors import (
    BATCH_FATAL_ERRORS,
    connection_test_outcome,
    error_class,
    error_from_response,
    server_message,
)
from airflow_provider_grok.protocol.images import (
    DEFAULT_MAX_IMAGE_BYTES,
    ImageType,
    check_download_url,
    decode_b64_image,
    sniff_image_type,
    too_large_error,
    verify_image,
)
from airflow_provider_grok.protocol.machine import (
    EXPIRED_URL_STATUSES,
    MAX_RESPONSE_BYTES,
    ApiCall,
    Done,
    Download,
    GenerationCall,
    ImageBytes,
    Retry,
    Send,
    inline_image,
)
from airflow_provider_grok.protocol.params import (
    ASPECT_RATIOS,
    CORE_FIELDS,
    DEFAULT_MODEL,
    MAX_IMAGES_PER_CALL,
    MAX_IMAGES_PER_REQUEST,
    QUALITIES,
    RESOLUTIONS,
    RESPONSE_FORMATS,
    SIZES,
    GenerationOptions,
    GenerationParams,
    split_n,
    unknown_values,
    validate_generation_params,
)
from airflow_provider_grok.protocol.responses import (
    USD_TICKS,
    GeneratedImage,
    ImageGenerationResult,
    merge_results,
    parse_generation_response,
    settle_result,
    sum_usage,
)
from airflow_provider_grok.protocol.retry import RETRYABLE_STATUSES, RetryPolicy, retry_after_seconds
from airflow_provider_grok.protocol.settings import (
    CONNECTION_EXTRAS,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_READ_TIMEOUT,
    GENERATIONS_PATH,
    MODELS_PATH,
    ConnectionSettings,
    endpoint_url,
    settings_from_connection,
)

__all__ = [
    "ASPECT_RATIOS",
    "BATCH_FATAL_ERRORS",
    "CONNECTION_EXTRAS",
    "CORE_FIELDS",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MODEL",
    "DEFAULT_READ_TIMEOUT",
    "EXPIRED_URL_STATUSES",
    "GENERATIONS_PATH",
    "MAX_IMAGES_PER_CALL",
    "MAX_IMAGES_PER_REQUEST",
    "MAX_RESPONSE_BYTES",
    "MODELS_PATH",
    "QUALITIES",
    "RESOLUTIONS",
    "RESPONSE_FORMATS",
    "RETRYABLE_STATUSES",
    "SIZES",
    "USD_TICKS",
    "ApiCall",
    "ConnectionSettings",
    "Done",
    "Download",
    "GeneratedImage",
    "GenerationCall",
    "GenerationOptions",
    "GenerationParams",
    "ImageBytes",
    "ImageGenerationResult",
    "ImageType",
    "Retry",
    "RetryPolicy",
    "Send",
    "check_download_url",
    "connection_test_outcome",
    "decode_b64_image",
    "endpoint_url",
    "error_class",
    "error_from_response",
    "header",
    "inline_image",
    "merge_results",
    "parse_generation_response",
    "redact",
    "request_id_from_headers",
    "retry_after_seconds",
    "server_message",
    "settings_from_connection",
    "settle_result",
    "sniff_image_type",
    "split_n",
    "sum_usage",
    "too_large_error",
    "unknown_values",
    "validate_generation_params",
    "verify_image",
]
