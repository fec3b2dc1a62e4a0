"""The agent's desired state on disk: atomic writes, a schema version, forward migration.

The file (``<state-dir>/state.json``) is rewritten whole on every change: written to a temporary file
in the same directory, fsynced, renamed over the old one, and the directory fsynced. A crash leaves
either the old or the new file, never a torn one. Older schema versions are migrated on load; a newer
one (a downgrade) is refused rather than misread.

Schema history:
  1  ``{"version": 1, "instances": [{name, role, cluster_id, owner, options, links: [...]}]}``
  2  instances keyed by name, ``spec`` separate from agent bookkeeping (bound listen address, owner
     confirmation time), links keyed by remote cluster id, communication-domain links.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cachelink_agent import models
from llm_datadist.status import CacheLinkError

SCHEMA_VERSION = 2
STATE_FILE = "state.json"


class StateError(CacheLinkError):
    """The state file cannot be read or is of a version this agent does not know."""


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (same-directory temp file, fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class InstanceRecord(BaseModel):
    """One instance the agent was told about."""

    model_config = ConfigDict(extra="forbid")

    spec: dict[str, Any]
    bound_listen: str = ""
    created_at: float = Field(default_factory=time.time)
    owner_confirmed_at: float = Field(default_factory=time.time)
    links: dict[str, models.LinkSpec] = Field(default_factory=dict)
    comm_links: dict[str, models.CommLinkSpec] = Field(default_factory=dict)

    def instance_spec(self) -> models.InstanceSpec:
        """The validated spec."""
        return models.InstanceSpec.model_validate(self.spec)


class AgentState(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    node_name: str = ""
    instances: dict[str, InstanceRecord] = Field(default_factory=dict)


def _migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    instances: dict[str, Any] = {}
    for item in data.get("instances", []):
        spec = {key: item[key] for key in ("role", "cluster_id", "owner", "options") if key in item}
        links = {
            str(link["remote_cluster_id"]): {
                "remote_address": link["remote_address"],
                "timeout_ms": link.get("timeout_ms", 3000),
            }
            for link in item.get("links", [])
        }
        instances[item["name"]] = {"spec": spec, "links": links}
    return {"schema_version": 2, "node_name": data.get("node_name", ""), "instances": instances}


_MIGRATIONS = {1: _migrate_v1}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a state document of any known version to ``SCHEMA_VERSION``."""
    version = data.get("schema_version", data.get("version"))
    if not isinstance(version, int) or version < 1:
        raise StateError(f"state file has no valid schema version: {version!r}")
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state file has schema version {version}, newer than this agent's {SCHEMA_VERSION}; "
            "refusing to downgrade it"
        )
    while version < SCHEMA_VERSION:
        data = _MIGRATIONS[version](data)
        version = data["schema_version"]
    return data


class StateStore:
    """Reads and writes ``<state-dir>/state.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def load(self) -> AgentState:
        """The stored state (empty when there is no file)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        except OSError as error:
            raise StateError(f"cannot read {self.path}: {error}") from error
        try:
            data = json.loads(raw)
        except ValueError as error:
            raise StateError(f"{self.path} is not JSON: {error}") from error
        if not isinstance(data, dict):
            raise StateError(f"{self.path} is not a JSON object")
        try:
            return AgentState.model_validate(migrate(data))
        except (ValidationError, KeyError, TypeError) as error:
            raise StateError(f"{self.path} does not match schema {SCHEMA_VERSION}: {error}") from error

    @staticmethod
    def encode(state: AgentState) -> bytes:
        """The file's bytes for ``state``."""
        return state.model_dump_json(indent=1).encode()

    def save(self, state: AgentState) -> None:
        """Write ``state`` atomically."""
        self.write(self.encode(state))

    def write(self, data: bytes) -> None:
        """Write bytes made by :meth:`encode` atomically."""
        atomic_write(self.path, data)
