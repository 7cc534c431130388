"""The one error type the web layer turns into an HTTP status and a JSON ``{"error": message}``."""
from __future__ import annotations


class HttpError(Exception):
    """``status`` and a message for the visitor; ``retry_after`` (seconds) becomes a Retry-After header."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
