"""The errors the provider raises. Every one is a :class:`GrokError`.

Each carries what a user needs to act on it: the HTTP ``status`` (when there was a response), the
server's own ``server_message`` and the ``request_id`` to quote to the gateway's support. The API
key never appears in any of them: messages from the server are redacted before they get here.
"""

from __future__ import annotations

from typing import Any


class GrokError(Exception):
    """
    Base class of every error about the Grok Imagine API.

    :param message: the full, human-readable explanation (what failed, the server's words, what to do).
    :param status: HTTP status of the response, if there was one.
    :param server_message: the message the server sent, redacted.
    :param request_id: the gateway's request id, if it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        server_message: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.server_message = server_message
        self.request_id = request_id
        # Set by the hook when a split request (n > 10) failed after some sub-requests had already
        # produced (and been billed for) images, so the caller can still store them.
        self.partial_result: Any = None
        # Attempts of the failed request whose answer never arrived, before its last one (may be billed).
        self.unanswered_attempts = 0

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments break default exception pickling (used when errors cross processes).
        return (
            _rebuild,
            (type(self), self.message, self.status, self.server_message, self.request_id),
        )


def _rebuild(
    cls: type[GrokError], message: str, status: int | None, server_message: str | None, request_id: str | None
) -> GrokError:
    return cls(message, status=status, server_message=server_message, request_id=request_id)


class GrokValidationError(GrokError, ValueError):
    """A parameter or connection setting is invalid. Raised before any request is sent (nothing billed)."""


class GrokAuthError(GrokError):
    """The API key is missing, wrong or not allowed to use this model (401/403, and xAI's 400 for a bad key)."""


class GrokBadRequestError(GrokError):
    """The gateway rejected the request as invalid (400, 415, 422). Retrying the same request cannot help."""


class GrokNotFoundError(GrokBadRequestError):
    """404: an unknown model, or a base URL whose ``/v1`` is doubled or missing."""


class GrokContentFilteredError(GrokBadRequestError):
    """The prompt or every generated image was refused by content moderation (still billed on some gateways)."""


class GrokRateLimitError(GrokError):
    """429 from the gateway, still there after the configured retries."""


class GrokServerError(GrokError):
    """A server or gateway fault (5xx, 408, 409, an HTML error page), still there after the configured retries."""


class GrokTransportError(GrokError):
    """The request never got an HTTP answer: connection refused or dropped, or a timeout."""


class GrokResponseError(GrokError):
    """The gateway answered 200 with a body that is not a valid image-generation response."""


class GrokImageDownloadError(GrokError):
    """A generated image could not be fetched or decoded: expired URL, too large, or not an image."""


class GrokStorageError(GrokError):
    """Storing images or the manifest in S3 failed (missing bucket, access denied, upload error)."""


class GrokIncompleteError(GrokError):
    """Some prompts produced no stored images. What was stored stays in S3 and in the manifest."""


class GrokPrefixInUseError(GrokValidationError):
    """The S3 prefix holds another task instance's images: refused before any request, nothing adopted."""


class GrokCostCapExceededError(GrokError):
    """
    The task's ``max_cost_usd`` stopped it before a request that could have passed the cap (or the gateway
    reports no cost, so the cap cannot be enforced). What was stored stays in S3 and in the manifest; a retry
    with a higher cap generates only what is missing.

    :param cap_usd: the cap; :param spent_usd: what this task instance was billed, all tries together;
    :param not_generated: the prompt indexes still missing images.
    """

    def __init__(
        self,
        message: str,
        *,
        cap_usd: float | None = None,
        spent_usd: float | None = None,
        not_generated: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.cap_usd = cap_usd
        self.spent_usd = spent_usd
        self.not_generated = list(not_generated or [])


# Error types a trigger event may name: an explicit map of every GrokError defined above, never a name
# looked up in a module at the moment an event is read. The old name of the cap's error still reads.
ERROR_TYPES: dict[str, type[GrokError]] = {
    cls.__name__: cls
    for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, GrokError) and cls.__module__ == __name__
}
ERROR_TYPES["GrokBudgetExceededError"] = GrokCostCapExceededError


def error_class(name: str) -> type[GrokError]:
    """The error class an event or record names; :class:`GrokError` for a name this release does not know."""
    return ERROR_TYPES.get(name, GrokError)


def __getattr__(name: str) -> Any:
    # "Budget" is the rate budget's word; the money cap's error was renamed in 0.5 (round 4).
    if name == "GrokBudgetExceededError":
        import warnings

        warnings.warn(
            "GrokBudgetExceededError is deprecated: use GrokCostCapExceededError (the same class).",
            DeprecationWarning,
            stacklevel=2,
        )
        return GrokCostCapExceededError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
