"""The OpenAPI 3.1 document of the agent's API, generated from the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from cachelink_agent import models

_REF = "#/components/schemas/{model}"
_REQUESTS: tuple[type[BaseModel], ...] = (
    models.InstanceSpec,
    models.LinkSpec,
    models.CommLinkSpec,
    models.OwnerConfirmation,
)
_RESPONSES: tuple[type[BaseModel], ...] = (
    models.PutResult,
    models.DeleteResult,
    models.InstanceStatus,
    models.InstanceList,
    models.NodeInfo,
    models.OwnerList,
    models.OwnerConfirmResult,
    models.ErrorBody,
)
_ERRORS = {
    "400": "malformed JSON",
    "401": "missing or wrong token",
    "403": "a token of another node",
    "404": "no such instance",
    "413": "request body too large",
    "422": "invalid input (fields named)",
}


def build(version: str) -> dict[str, Any]:
    """The whole document."""
    pairs = [(m, "validation") for m in _REQUESTS] + [(m, "serialization") for m in _RESPONSES]
    refs, defs = models_json_schema(pairs, ref_template=_REF)  # type: ignore[arg-type]

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(refs[(model, mode)])  # type: ignore[index]

    def ok(model: type[BaseModel], description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": ref(model, "serialization")}},
        }

    def errors(*extra: str) -> dict[str, Any]:
        codes = {"400", "401", "403", "413", "422", *extra}
        described = {
            **_ERRORS,
            "409": "conflicts with the current state",
            "424": "the link failed (llm_status)",
            "503": "the agent or instance is not ready; retry",
        }
        error = {"application/json": {"schema": ref(models.ErrorBody, "serialization")}}
        return {code: {"description": described[code], "content": error} for code in sorted(codes)}

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": ref(model, "validation")}}}

    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": models.DNS1123_LABEL, "maxLength": 63},
    }
    remote = {
        "name": "remote_cluster_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "maximum": models.MAX_UINT64},
    }
    comm = {
        "name": "comm_name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,127}$"},
    }
    unlink_query = [
        {"name": "force", "in": "query", "required": False, "schema": {"type": "boolean", "default": False}},
        {
            "name": "timeout_ms",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": models.MAX_TIMEOUT_MS, "default": 3000},
        },
    ]
    status_text = {
        "application/json": {
            "schema": {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
        }
    }
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "liveness (no token)",
                "security": [],
                "responses": {"200": {"description": "alive", "content": status_text}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "readiness: state restored (no token)",
                "security": [],
                "responses": {
                    "200": {"description": "ready", "content": status_text},
                    "503": {"description": "restoring", "content": status_text},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "exposition text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **errors(),
                },
            }
        },
        "/v1/node": {
            "get": {
                "summary": "node addresses and shared memory",
                "responses": {"200": ok(models.NodeInfo, "the node"), **errors()},
            }
        },
        "/v1/instances": {
            "get": {
                "summary": "all instances, or those of the owners named",
                "parameters": [
                    {
                        "name": "owner",
                        "in": "query",
                        "required": False,
                        "description": f"repeatable, at most {models.MAX_OWNERS}: list only these owners'"
                        " instances (only their engines are asked)",
                        "schema": {"type": "string", "minLength": 1, "maxLength": models.MAX_OWNER_LEN},
                        "style": "form",
                        "explode": True,
                    }
                ],
                "responses": {"200": ok(models.InstanceList, "instances"), **errors()},
            }
        },
        "/v1/instances/{name}": {
            "parameters": [name],
            "get": {
                "summary": "one instance",
                "responses": {"200": ok(models.InstanceStatus, "the instance"), **errors("404")},
            },
            "put": {
                "summary": "create / confirm / replace an instance",
                "requestBody": body(models.InstanceSpec),
                "responses": {
                    "200": ok(models.PutResult, "unchanged or replaced"),
                    "201": ok(models.PutResult, "created"),
                    **errors("409", "503"),
                },
            },
            "delete": {
                "summary": "unlink everything and finalize",
                "responses": {"200": ok(models.DeleteResult, "finalized"), **errors("404")},
            },
        },
        "/v1/instances/{name}/links/{remote_cluster_id}": {
            "parameters": [name, remote],
            "put": {
                "summary": "link_clusters to a remote",
                "requestBody": body(models.LinkSpec),
                "responses": {
                    "200": ok(models.PutResult, "linked or unchanged"),
                    **errors("404", "409", "424", "503"),
                },
            },
            "delete": {
                "summary": "unlink_clusters",
                "parameters": unlink_query,
                "responses": {"200": ok(models.DeleteResult, "unlinked"), **errors("404", "503")},
            },
        },
        "/v1/instances/{name}/comm-links/{comm_name}": {
            "parameters": [name, comm],
            "put": {
                "summary": "join a communication domain (rank table)",
                "requestBody": body(models.CommLinkSpec),
                "responses": {
                    "200": ok(models.PutResult, "joined or unchanged"),
                    **errors("404", "409", "503"),
                },
            },
            "delete": {
                "summary": "leave a communication domain",
                "responses": {"200": ok(models.DeleteResult, "left"), **errors("404", "503")},
            },
        },
        "/v1/owners": {
            "get": {
                "summary": "each owner's live instance names (no engine is asked)",
                "responses": {"200": ok(models.OwnerList, "owners"), **errors()},
            }
        },
        "/v1/owners/confirm": {
            "post": {
                "summary": "reconfirm owners (resets their instances' TTL)",
                "requestBody": body(models.OwnerConfirmation),
                "responses": {"200": ok(models.OwnerConfirmResult, "confirmed"), **errors()},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cachelink-agent",
            "version": version,
            "description": "Node agent of CacheLink: owns the node's LLMDataDist instances.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
