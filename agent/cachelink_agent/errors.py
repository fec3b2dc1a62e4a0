"""Errors the agent reports: each carries the HTTP status and the JSON body's ``error`` code."""

from __future__ import annotations

from cachelink_agent import models


class ApiError(Exception):
    """A request the agent refuses or could not carry out; becomes an ``ErrorBody`` response."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        llm_status: str | None = None,
        fields: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.llm_status = llm_status
        self.fields = fields

    def body(self) -> models.ErrorBody:
        """The JSON body of the response."""
        return models.ErrorBody(
            error=self.error, message=self.message, llm_status=self.llm_status, fields=self.fields
        )


class EngineError(Exception):
    """An engine call failed in a runtime (in-process or in a worker); carries what the engine raised."""

    def __init__(self, kind: str, message: str, llm_status: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "LLMException" | "TypeError" | "ValueError" | "RuntimeError" | "OSError" ...
        self.message = message
        self.llm_status = llm_status

    @property
    def is_invalid_input(self) -> bool:
        """True for what the engine rejects as bad input (the client's fault: 422)."""
        return self.kind in ("TypeError", "ValueError") or self.llm_status == "LLM_PARAM_INVALID"

    def to_wire(self) -> dict[str, str | None]:
        """JSON form (worker -> agent)."""
        return {"kind": self.kind, "message": self.message, "llm_status": self.llm_status}

    @classmethod
    def from_wire(cls, data: dict[str, str | None]) -> EngineError:
        """Inverse of ``to_wire``."""
        return cls(str(data.get("kind")), str(data.get("message")), data.get("llm_status"))

    @classmethod
    def from_exception(cls, error: BaseException) -> EngineError:
        """Wrap what an engine call raised."""
        status = getattr(error, "status_code", None)
        name = getattr(status, "name", None)
        return cls(type(error).__name__, str(error), name if isinstance(name, str) else None)
