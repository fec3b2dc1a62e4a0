"""The agent's HTTP API (aiohttp): routing, body validation, auth, errors as JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from cachelink_agent import __version__, metrics, models, netinfo, openapi
from cachelink_agent.auth import TokenChecker, VerifyKeyFile
from cachelink_agent.config import AgentConfig
from cachelink_agent.errors import ApiError
from cachelink_agent.instances import InstanceManager

_log = logging.getLogger("cachelink_agent.server")
#: the methods request metrics name; any other (a caller may send anything) is counted as "other"
_METRIC_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH"})
_M = TypeVar("_M", bound=BaseModel)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PUBLIC = frozenset({"/healthz", "/readyz"})
_COMM_NAME = r"^[A-Za-z0-9._-]{1,127}$"
MANAGER = web.AppKey("manager", InstanceManager)
METRICS = web.AppKey("metrics", metrics.AgentMetrics)
CONFIG = web.AppKey("config", AgentConfig)
_SLUGS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


def _error(error: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=error.body().model_dump_json(exclude_none=True),
        status=error.status,
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return _error(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        message = error.text if error.text and not error.text.startswith(str(error.status)) else error.reason
        return _error(ApiError(error.status, _SLUGS.get(error.status, "http_error"), message), headers)
    except Exception:  # noqa: BLE001 - any failure becomes a logged 500 with a JSON body, never a crash
        _log.exception("unhandled error in %s %s", request.method, request.path)
        return _error(ApiError(500, "internal_error", "internal error; see the agent's log"))


def _auth(checker: TokenChecker) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path not in _PUBLIC:
            checker.check(request.headers.get("Authorization"), request.method, request.path)
        return await handler(request)

    return middleware


def _count(registry: metrics.AgentMetrics) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except ApiError as error:
            status = error.status
            raise
        except web.HTTPException as error:
            status = error.status
            raise
        finally:
            method = request.method if request.method in _METRIC_METHODS else "other"
            registry.requests.labels(method, name, str(status)).inc()

    return middleware


async def _body(request: web.Request, model: type[_M]) -> _M:
    raw = await request.read()
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise ApiError(400, "malformed_json", f"request body is not JSON: {error}") from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        fields = [
            {"loc": ".".join(str(p) for p in item["loc"]) or "body", "msg": item["msg"]}
            for item in error.errors()
        ]
        names = ", ".join(f["loc"] for f in fields[:5])
        raise ApiError(422, "validation_error", f"invalid request body: {names}", fields=fields) from None


def _invalid(loc: str, why: str, message: str, error: str = "validation_error") -> ApiError:
    """A 422 naming the invalid input (``loc`` as ``path.x``, ``query.x`` or a body field)."""
    return ApiError(422, error, message, fields=[{"loc": loc, "msg": why}])


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not models.is_instance_name(name):
        raise _invalid(
            "path.name",
            "must be a DNS-1123 label",
            f"instance name {name[:80]!r} is not a DNS-1123 label",
            "invalid_name",
        )
    return name


def _remote(request: web.Request) -> int:
    text = request.match_info["remote_cluster_id"]
    if not text.isdigit() or int(text) > models.MAX_UINT64:
        raise _invalid(
            "path.remote_cluster_id",
            "must be a uint64",
            f"remote cluster id {text[:40]!r} is not a uint64",
            "invalid_cluster_id",
        )
    return int(text)


def _comm(request: web.Request) -> str:
    import re  # noqa: PLC0415 - used only here

    text = request.match_info["comm_name"]
    if not re.fullmatch(_COMM_NAME, text):
        raise _invalid(
            "path.comm_name", "invalid", "comm name must be 1-127 of [A-Za-z0-9._-]", "invalid_comm_name"
        )
    return text


def _query_bool(request: web.Request, key: str) -> bool:
    text = request.query.get(key, "false").lower()
    if text not in ("true", "false", "1", "0"):
        raise _invalid(f"query.{key}", "must be a boolean", f"query {key} must be true or false")
    return text in ("true", "1")


def _known_query(request: web.Request, *names: str) -> None:
    """Refuse query parameters the route does not take (a typo must not silently widen a listing)."""
    unknown = sorted(set(request.query) - set(names))
    if unknown:
        raise _invalid(
            f"query.{unknown[0][:40]}",
            "unknown parameter",
            f"unknown query parameter {unknown[0][:40]!r}; this route takes: {', '.join(names) or 'none'}",
        )


def _query_owners(request: web.Request) -> set[str] | None:
    """``?owner=`` (repeatable): the owners whose instances to list, or None for all."""
    _known_query(request, "owner")
    owners = request.query.getall("owner", [])
    if not owners:
        return None
    if len(owners) > models.MAX_OWNERS or any(
        not 1 <= len(owner) <= models.MAX_OWNER_LEN for owner in owners
    ):
        raise _invalid(
            "query.owner",
            "invalid",
            f"query owner: at most {models.MAX_OWNERS} values of 1-{models.MAX_OWNER_LEN} characters",
        )
    return set(owners)


def _query_timeout(request: web.Request) -> int:
    text = request.query.get("timeout_ms", "3000")
    if not text.isdigit() or not 1 <= int(text) <= models.MAX_TIMEOUT_MS:
        raise _invalid(
            "query.timeout_ms",
            "out of range",
            f"query timeout_ms must be in [1, {models.MAX_TIMEOUT_MS}]",
        )
    return int(text)


class _Routes:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    @property
    def manager(self) -> InstanceManager:
        return self.app[MANAGER]

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.manager.ready
        return web.json_response({"status": "ready" if ready else "restoring"}, status=200 if ready else 503)

    async def openapi_doc(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.build(__version__))

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=self.app[METRICS].render(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def node(self, request: web.Request) -> web.Response:
        config = self.app[CONFIG]
        found = netinfo.interfaces()
        capacity, free = netinfo.shm_capacity(str(config.pool_dir))
        return _json(
            models.NodeInfo(
                node_name=config.node_name,
                mode=config.mode,
                interfaces=found,
                candidate_addresses=netinfo.candidate_addresses(found),
                shm_path=str(config.pool_dir),
                shm_capacity_bytes=capacity,
                shm_free_bytes=free,
                pool_budget_bytes=config.max_pool_bytes,
                pool_reserved_bytes=self.manager.reserved_pool_bytes(),
                instances=len(self.manager.instances),
                listen_ports=self.manager.listen_ports(),
                version=__version__,
            )
        )

    async def list_instances(self, request: web.Request) -> web.Response:
        owners = _query_owners(request)
        return _json(models.InstanceList(instances=await self.manager.list_status(owners)))

    async def owners(self, request: web.Request) -> web.Response:
        return _json(models.OwnerList(owners=self.manager.owners()))

    async def get_instance(self, request: web.Request) -> web.Response:
        return _json(await self.manager.status(_name(request)))

    async def put_instance(self, request: web.Request) -> web.Response:
        name = _name(request)
        result = await self.manager.put_instance(name, await _body(request, models.InstanceSpec))
        return _json(result, 201 if result.action == "created" else 200)

    async def delete_instance(self, request: web.Request) -> web.Response:
        return _json(await self.manager.delete_instance(_name(request)))

    async def put_link(self, request: web.Request) -> web.Response:
        name, remote = _name(request), _remote(request)
        return _json(await self.manager.put_link(name, remote, await _body(request, models.LinkSpec)))

    async def delete_link(self, request: web.Request) -> web.Response:
        _known_query(request, "force", "timeout_ms")
        name, remote = _name(request), _remote(request)
        return _json(
            await self.manager.delete_link(
                name, remote, _query_bool(request, "force"), _query_timeout(request)
            )
        )

    async def put_comm_link(self, request: web.Request) -> web.Response:
        name, comm = _name(request), _comm(request)
        return _json(await self.manager.put_comm_link(name, comm, await _body(request, models.CommLinkSpec)))

    async def delete_comm_link(self, request: web.Request) -> web.Response:
        return _json(await self.manager.delete_comm_link(_name(request), _comm(request)))

    async def confirm(self, request: web.Request) -> web.Response:
        body = await _body(request, models.OwnerConfirmation)
        return _json(await self.manager.confirm_owners(body.owners))


def create_app(
    config: AgentConfig, manager: InstanceManager, registry: metrics.AgentMetrics
) -> web.Application:
    """The aiohttp application (``client_max_size`` bounds every body)."""
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[
            _errors,
            _count(registry),
            _auth(
                TokenChecker(VerifyKeyFile(config.verify_key_file), config.node_name, config.metrics_token)
            ),
        ],
    )
    app[MANAGER] = manager
    app[METRICS] = registry
    app[CONFIG] = config
    routes = _Routes(app)
    base = f"/{models.API_VERSION}"
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/openapi.json", routes.openapi_doc)
    app.router.add_get("/metrics", routes.metrics_text)
    app.router.add_get(f"{base}/node", routes.node)
    app.router.add_get(f"{base}/instances", routes.list_instances)
    app.router.add_get(f"{base}/instances/{{name}}", routes.get_instance)
    app.router.add_put(f"{base}/instances/{{name}}", routes.put_instance)
    app.router.add_delete(f"{base}/instances/{{name}}", routes.delete_instance)
    app.router.add_put(f"{base}/instances/{{name}}/links/{{remote_cluster_id}}", routes.put_link)
    app.router.add_delete(f"{base}/instances/{{name}}/links/{{remote_cluster_id}}", routes.delete_link)
    app.router.add_put(f"{base}/instances/{{name}}/comm-links/{{comm_name}}", routes.put_comm_link)
    app.router.add_delete(f"{base}/instances/{{name}}/comm-links/{{comm_name}}", routes.delete_comm_link)
    app.router.add_get(f"{base}/owners", routes.owners)
    app.router.add_post(f"{base}/owners/confirm", routes.confirm)
    return app
