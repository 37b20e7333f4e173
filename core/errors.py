"""The project's one error hierarchy.

Errors carry a message written for the person in the chat. Only the edge (chat_app)
turns them into chat messages; everything below raises. The classes say who must act:
the user or the model must change the request (InvalidInput, NotFound), the provider
said no (ContentRefused, QuotaExhausted, RateLimited), or something is broken
(BackendUnavailable, BackendFailed, PersistenceError, ConfigError).
"""

from __future__ import annotations

from core.redact import redact_urls


class AtelierError(Exception):
    """Base class: `str(error)` is safe to show to the user (no secrets, no stack).

    Messages may quote a configured URL or a provider's own error text; a password in
    any URL there is masked here, once for every error (`core.redact`).
    """

    def __init__(self, message: str) -> None:
        message = redact_urls(message)
        super().__init__(message)
        self.message = message


class ConfigError(AtelierError):
    """The operator's configuration is wrong; start-up stops with this message."""


class InvalidInput(AtelierError):
    """The request cannot be honoured as asked; asking differently can succeed."""


class NotFound(AtelierError):
    """The thing does not exist, or belongs to someone else (we do not say which)."""


class AccessDenied(AtelierError):
    """Nobody is named as asking (not logged in, or a code path that did not say who it
    acts for): refused rather than read or written without an owner check."""


class PersistenceError(AtelierError):
    """The database or media store failed to save something."""


class BackendError(AtelierError):
    """A generation backend failed; subclasses say how."""


class ContentRefused(BackendError):
    """The provider's safety system refused the request."""


class QuotaExhausted(BackendError):
    """The account has no credit left; retrying cannot help."""


class RateLimited(BackendError):
    """Too many requests right now; retrying later can help."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendUnavailable(BackendError):
    """The provider could not be reached (network, timeout, DNS)."""


class BackendNotConfigured(BackendError):
    """The backend lacks a key or URL, or the key was rejected."""


class BackendFailed(BackendError):
    """The provider answered with an error we cannot attribute to the request."""


class ModelUnavailable(InvalidInput):
    """The provider says the model does not exist (any more): the model catalogue can say
    what replaced it, so the error carries which model it was."""

    def __init__(self, message: str, backend: str, model: str) -> None:
        super().__init__(message)
        self.backend = backend
        self.model = model


class ModelRetired(InvalidInput):
    """The model is past its shutdown day (model catalogue): nothing may be sent to it."""
