"""Rank tables of communication-domain links (``LLMDataDist.link``), as real clients write them.

Versions "1.0" and "1.2" list servers, each with devices carrying ``device_id``, ``device_ip`` and
``rank_id``. In CacheLink a rank's endpoint is ``device_ip`` and, for the port, ``device_port`` when
present, else ``cachelink.comm_base_port`` (default 16000) plus ``device_id``, so two ranks on one machine
work with distinct loopback addresses or distinct device ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llm_datadist.status import LLMException, LLMStatusCode

SUPPORTED_VERSIONS = ("1.0", "1.2")


@dataclass(frozen=True)
class RankEndpoint:
    """Where one rank of a domain listens."""

    rank: int
    ip: str
    port: int


def _invalid(message: str) -> LLMException:
    return LLMException(f"rank_table is invalid: {message}", status_code=LLMStatusCode.LLM_PARAM_INVALID)


def _int_field(device: dict[str, Any], name: str) -> int:
    value = device.get(name)
    try:
        return int(str(value))
    except ValueError:
        raise _invalid(f"{name} {value!r} is not an integer") from None


def parse_rank_table(text: str, base_port: int) -> dict[int, RankEndpoint]:
    """Map each rank id of the table to its endpoint."""
    try:
        table = json.loads(text)
    except ValueError:
        raise _invalid("not JSON") from None
    if not isinstance(table, dict):
        raise _invalid("not a JSON object")
    version = str(table.get("version", ""))
    if version not in SUPPORTED_VERSIONS:
        raise _invalid(f"version {version!r} is not one of {', '.join(SUPPORTED_VERSIONS)}")
    servers = table.get("server_list")
    if not isinstance(servers, list) or not servers:
        raise _invalid("server_list is missing or empty")
    endpoints: dict[int, RankEndpoint] = {}
    for server in servers:
        devices = server.get("device") if isinstance(server, dict) else None
        if not isinstance(devices, list):
            raise _invalid("every server needs a device list")
        for device in devices:
            if not isinstance(device, dict) or "rank_id" not in device or "device_ip" not in device:
                raise _invalid("every device needs rank_id and device_ip")
            rank = _int_field(device, "rank_id")
            if "device_port" in device:
                port = _int_field(device, "device_port")
            else:
                port = base_port + _int_field(device, "device_id")
            if not 0 < port <= 0xFFFF:
                raise _invalid(f"rank {rank} has port {port} outside 1..65535")
            if rank in endpoints:
                raise _invalid(f"rank {rank} appears twice")
            endpoints[rank] = RankEndpoint(rank, str(device["device_ip"]), port)
    return endpoints
