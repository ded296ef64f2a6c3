"""The project's exceptions. Each carries its HTTP status and OpenAI-style error type;
they are mapped to HTTP responses once, at the edge (worker / gateway apps)."""

from __future__ import annotations


class BabeldeskError(Exception):
    """Base class. ``status`` is the HTTP status the edge answers with."""

    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_dict(self) -> dict[str, object]:
        err: dict[str, object] = {"type": self.type, "message": self.message}
        if self.param is not None:
            err["param"] = self.param
        return {"error": err}


class ConfigError(BabeldeskError):
    """An invalid configuration value; raised at start-up, names the key."""

    type = "config_error"

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}", param=key)
        self.key = key


class KnowledgeBaseError(ConfigError):
    """A malformed knowledge-base file; raised at start-up. ``key`` is
    ``<folder>/<file>: <field>`` (``kb/refund_status.yaml: answers.es``)."""

    type = "knowledge_base_error"

    def __init__(self, file: str, field: str, message: str) -> None:
        super().__init__(f"{file}: {field}" if field else file, message)
        self.file = file
        self.field = field


class InvalidRequest(BabeldeskError):
    status = 400
    type = "invalid_request_error"


class ContextTooLong(InvalidRequest):
    """Prompt (+ requested output) longer than max_model_len."""


class ModelNotFound(BabeldeskError):
    status = 404
    type = "model_not_found"


class NotFound(BabeldeskError):
    """An unknown (or expired, or erased) resource such as a session id."""

    status = 404
    type = "not_found_error"


class Forbidden(BabeldeskError):
    """A known caller that may not do this (wrong scope, another agent's conversation)."""

    status = 403
    type = "permission_error"


class Conflict(BabeldeskError):
    """The resource is not in a state that allows this (a conversation already claimed,
    closed, or not claimed). ``state`` and ``owner``: what the caller found."""

    status = 409
    type = "conflict_error"

    def __init__(self, message: str, *, state: str | None = None,
                 owner: str | None = None) -> None:
        super().__init__(message)
        self.state = state
        self.owner = owner


class PayloadTooLarge(BabeldeskError):
    status = 413
    type = "payload_too_large"


class Unauthorized(BabeldeskError):
    status = 401
    type = "authentication_error"


class QueueFull(BabeldeskError):
    """The bounded queue is full. ``retry_after`` is seconds."""

    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(QueueFull):
    """A client over one of its rate limits (edge/ratelimit.py); 429 with Retry-After."""


class Unavailable(BabeldeskError):
    """Not able to serve now: loading, draining, no healthy upstream."""

    status = 503
    type = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelLoadError(BabeldeskError):
    """A model reference that cannot be resolved, assembled or verified."""

    type = "model_load_error"


class OutOfMemory(BabeldeskError):
    """A step did not fit in (device or configured) memory; the scheduler splits the batch."""

    status = 507
    type = "out_of_memory"


class GenerationFailed(BabeldeskError):
    status = 500
    type = "generation_failed"
