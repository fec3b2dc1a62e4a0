"""Async client of the agent's API (what the operator uses).

Every method returns a pydantic model from ``models``; every failure raises an ``AgentError`` subclass
carrying the HTTP status and the agent's JSON error body. ``base_url`` is ``http(s)://host:port`` or
``unix:/path/to/api.sock``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ValidationError

from cachelink_agent import models

_M = TypeVar("_M", bound=BaseModel)


class AgentError(Exception):
    """The agent refused or failed a request (``status`` 0: it could not be reached)."""

    def __init__(self, status: int, message: str, body: models.ErrorBody | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.body = body

    @property
    def error(self) -> str:
        """The agent's error code (``ErrorBody.error``), or "unreachable"."""
        return self.body.error if self.body else "unreachable"

    @property
    def llm_status(self) -> str | None:
        """The LLMStatusCode name, for engine failures."""
        return self.body.llm_status if self.body else None


class AgentUnreachable(AgentError):
    """Connection refused, reset or timed out (retry later)."""


class AgentUnauthorized(AgentError):
    """401: no token or a wrong one."""


class AgentForbidden(AgentError):
    """403: a token of another node, or a credential whose scope does not allow the call."""


class AgentNotFound(AgentError):
    """404: no such instance or link."""


class AgentConflict(AgentError):
    """409: conflicts with the current state (different spec, pool budget, engine refusal)."""


class AgentInvalid(AgentError):
    """400/413/422: the request is malformed, too big or invalid (``body.fields`` names the fields)."""


class AgentLinkFailed(AgentError):
    """424: a link could not be made; ``llm_status`` says why."""


class AgentUnavailable(AgentError):
    """503: the agent or the instance is not ready (restarting): retry later."""


_BY_STATUS: dict[int, type[AgentError]] = {
    400: AgentInvalid,
    401: AgentUnauthorized,
    403: AgentForbidden,
    404: AgentNotFound,
    409: AgentConflict,
    413: AgentInvalid,
    422: AgentInvalid,
    424: AgentLinkFailed,
    503: AgentUnavailable,
}


class AgentClient:
    """Talks to one node's agent. Use as ``async with AgentClient(...) as client``."""

    def __init__(
        self,
        base_url: str,
        token: str | Callable[[], str],
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``token``: a bearer token, or a function giving the current one (tokens expire: see ``tokens``)."""
        self._timeout = timeout
        self._token = token
        if base_url.startswith("unix:"):
            self._connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=base_url[len("unix:") :])
            self._base = "http://agent"
        else:
            self._connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True)
            self._base = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(connector=self._connector)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON or text) for 2xx, raises ``AgentError`` otherwise."""
        try:
            async with self._session.request(
                method,
                self._base + path,
                json=json,
                params=params,
                headers={
                    "Authorization": f"Bearer {self._token() if callable(self._token) else self._token}"
                },
                timeout=aiohttp.ClientTimeout(total=timeout or self._timeout),
            ) as response:
                if response.content_type == "application/json":
                    payload: Any = await response.json()
                else:
                    payload = await response.text()
                if response.status < 300:
                    return response.status, payload
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise AgentUnreachable(0, f"agent at {self._base} unreachable: {error!r}") from error
        body = None
        if isinstance(payload, dict):
            try:
                body = models.ErrorBody.model_validate(payload)
            except ValidationError:
                body = None
        message = body.message if body else str(payload)[:500]
        raise _BY_STATUS.get(response.status, AgentError)(response.status, message, body)

    async def _model(
        self,
        model: type[_M],
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> _M:
        _status, payload = await self.request(method, path, json, params, timeout)
        return model.model_validate(payload)

    # ------------------------------------------------------------------------------ instances

    async def put_instance(self, name: str, spec: models.InstanceSpec) -> models.PutResult:
        """Create (or confirm, or with ``spec.replace`` replace) an instance."""
        return await self._model(
            models.PutResult, "PUT", f"/v1/instances/{quote(name, safe='')}", spec.model_dump(mode="json")
        )

    async def delete_instance(self, name: str, missing_ok: bool = True) -> models.DeleteResult:
        """Unlink everything and finalize; an absent instance is fine unless ``missing_ok`` is False."""
        try:
            return await self._model(models.DeleteResult, "DELETE", f"/v1/instances/{quote(name, safe='')}")
        except AgentNotFound:
            if not missing_ok:
                raise
            return models.DeleteResult(name=name, deleted=False, detail="not found")

    async def get_instances(self, owner: str | None = None) -> list[models.InstanceStatus]:
        """All instances of the node, or only those ``owner`` (a CacheLink UID) owns."""
        params = {"owner": owner} if owner is not None else None
        return (await self._model(models.InstanceList, "GET", "/v1/instances", params=params)).instances

    async def get_owners(self) -> dict[str, list[str]]:
        """Each owner's live instance names (no engine is asked: cheap on a busy node)."""
        return (await self._model(models.OwnerList, "GET", "/v1/owners")).owners

    async def get_instance(self, name: str) -> models.InstanceStatus:
        """One instance (``AgentNotFound`` when absent)."""
        return await self._model(models.InstanceStatus, "GET", f"/v1/instances/{quote(name, safe='')}")

    async def confirm_owner(self, *owners: str) -> models.OwnerConfirmResult:
        """Tell the agent these CacheLink UIDs still exist (resets their instances' TTL)."""
        return await self._model(
            models.OwnerConfirmResult,
            "POST",
            "/v1/owners/confirm",
            models.OwnerConfirmation(owners=list(owners)).model_dump(),
        )

    # ---------------------------------------------------------------------------------- links

    async def put_link(self, name: str, remote_cluster_id: int, spec: models.LinkSpec) -> models.PutResult:
        """Link the instance to a remote (``AgentLinkFailed`` with ``llm_status`` on failure)."""
        return await self._model(
            models.PutResult,
            "PUT",
            f"/v1/instances/{quote(name, safe='')}/links/{int(remote_cluster_id)}",
            spec.model_dump(mode="json"),
            timeout=self._timeout + spec.timeout_ms / 1000,
        )

    async def delete_link(
        self, name: str, remote_cluster_id: int, *, force: bool = False, timeout_ms: int = 3000
    ) -> models.DeleteResult:
        """Unlink (absent links are fine)."""
        return await self._model(
            models.DeleteResult,
            "DELETE",
            f"/v1/instances/{quote(name, safe='')}/links/{int(remote_cluster_id)}",
            params={"force": "true" if force else "false", "timeout_ms": str(timeout_ms)},
            timeout=self._timeout + timeout_ms / 1000,
        )

    async def put_comm_link(self, name: str, comm_name: str, spec: models.CommLinkSpec) -> models.PutResult:
        """Join a communication domain (all members must do so together)."""
        return await self._model(
            models.PutResult,
            "PUT",
            f"/v1/instances/{quote(name, safe='')}/comm-links/{quote(comm_name, safe='')}",
            spec.model_dump(mode="json"),
        )

    async def delete_comm_link(self, name: str, comm_name: str) -> models.DeleteResult:
        """Leave a communication domain."""
        return await self._model(
            models.DeleteResult,
            "DELETE",
            f"/v1/instances/{quote(name, safe='')}/comm-links/{quote(comm_name, safe='')}",
        )

    # ----------------------------------------------------------------------------------- node

    async def get_node(self) -> models.NodeInfo:
        """Node name, candidate addresses, shared-memory capacity and use."""
        return await self._model(models.NodeInfo, "GET", "/v1/node")

    async def metrics(self) -> str:
        """The Prometheus text."""
        _status, text = await self.request("GET", "/metrics")
        return str(text)
