"""Errors the agent reports: each carries the HTTP status and the JSON body's ``error`` code."""

from __future__ import annotations

from cachelink_agent import models
from cachelink_agent.protocol import ErrorKind
from llm_datadist.status import CacheLinkError, LLMStatusCode


def status_code_named(name: str | None, default: LLMStatusCode = LLMStatusCode.LLM_FAILED) -> LLMStatusCode:
    """The ``LLMStatusCode`` called ``name`` (``default`` when unknown or missing)."""
    return LLMStatusCode.__members__.get(name or "", default)


class ApiError(CacheLinkError):
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
        super().__init__(message, status_code=status_code_named(llm_status))
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


class EngineError(CacheLinkError):
    """An engine call failed in a runtime (in-process or in a worker); carries what the engine raised."""

    def __init__(
        self, kind: ErrorKind, message: str, llm_status: str | None = None, *, option_key: str = ""
    ) -> None:
        super().__init__(message, status_code=status_code_named(llm_status))
        self.kind = kind
        self.message = message
        self.llm_status = llm_status
        self.option_key = option_key  # the init option at fault, when one is

    @property
    def is_invalid_input(self) -> bool:
        """True for what the engine rejects as bad input (the client's fault: 422)."""
        return self.kind in (ErrorKind.TYPE, ErrorKind.VALUE) or self.llm_status == "LLM_PARAM_INVALID"

    def to_wire(self) -> dict[str, str | None]:
        """JSON form (worker -> agent, instance -> attached workload)."""
        wire: dict[str, str | None] = {
            "kind": self.kind.value,
            "message": self.message,
            "llm_status": self.llm_status,
        }
        if self.option_key:
            wire["option_key"] = self.option_key
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, str | None]) -> EngineError:
        """Inverse of ``to_wire``."""
        return cls(
            ErrorKind.parse(data.get("kind")),
            str(data.get("message")),
            data.get("llm_status"),
            option_key=str(data.get("option_key") or ""),
        )

    @classmethod
    def from_exception(cls, error: BaseException) -> EngineError:
        """Wrap what an engine call raised."""
        status = getattr(error, "status_code", None)
        name = getattr(status, "name", None)
        key = getattr(error, "key", "")
        return cls(
            ErrorKind.of(error),
            str(error),
            name if isinstance(name, str) else None,
            option_key=key if isinstance(key, str) else "",
        )
