"""Connector between an engine's block tables and CacheLink, shaped like vLLM's KV-connector (v1) roles.

Scheduler side (``SchedulerConnector``), one per engine:
  * ``get_num_new_matched_tokens`` - how many prompt tokens a request can load from a remote prompt server;
  * ``update_state_after_alloc`` - the local blocks the scheduler gave the request, to pull into;
  * ``build_connector_meta`` - what the worker must load this step (``ConnectorMetadata``);
  * ``request_finished`` - prompt side: keep the blocks (delay free), return the transfer parameters.

Worker side (``WorkerConnector``), next to the KV cache:
  * ``register_kv_caches`` - the paged cache (allocated with ``allocate_blocks_cache`` or registered with
    ``register_blocks_cache`` under ``BlocksCacheKey(cluster_id, 0)``);
  * ``start_load_kv`` - link to each remote prompt server (``link_clusters``, or ``link`` with a rank table
   and
    polling ``query_register_mem_status`` until ``OK``), then ``pull_blocks(BlocksCacheKey(remote, 0), cache,
    remote_block_ids, local_block_ids)``;
  * ``wait_for_layer_load`` / ``save_kv_layer`` / ``wait_for_save`` - nothing to do in the pull model (the
    prompt
    side's KV already sits in its CacheLink cache);
  * ``get_finished`` - requests whose load finished (then the prompt side is sent "finished") and, on the
    prompt side, requests whose blocks may be freed ("finished" received, or the hold timed out);
  * ``close`` - unlink every link.

This is the call order of vllm-ascend's LLM-DataDist connector; see docs/inference.md.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import llm_datadist as ld

LINK_CLUSTERS = "clusters"
LINK_RANK_TABLE = "rank_table"
LINK_EXTERNAL = "external"  # links are made by someone else (on Kubernetes: the operator); only pulls here
_RELINK_CODES = (ld.LLMStatusCode.LLM_TIMEOUT, ld.LLMStatusCode.LLM_NOT_YET_LINK)


class TransferError(RuntimeError):
    """A load could not be done (link or pull failed)."""


def _int_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name} must be a list of integers")
    if any(v < 0 for v in value):
        raise ValueError(f"{name} must not be negative")
    return list(value)


@dataclass(frozen=True)
class KVTransferParams:
    """What the prompt side hands to the decode side (vLLM's ``kv_transfer_params``)."""

    request_id: str
    remote_cluster_id: int
    remote_host: str
    remote_port: int
    remote_block_ids: list[int]
    num_tokens: int
    notify_url: str = ""
    remote_device_port: int = 0  # rank-table links: the prompt rank's device_port
    kv_digest: str = ""
    first_token: int = -1  # the token the prompt side sampled from the prompt's last logits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> KVTransferParams:
        if not isinstance(raw, dict):
            raise ValueError("kv_transfer_params must be an object")
        try:
            params = cls(
                request_id=str(raw["request_id"]),
                remote_cluster_id=int(raw["remote_cluster_id"]),
                remote_host=str(raw["remote_host"]),
                remote_port=int(raw["remote_port"]),
                remote_block_ids=_int_list(raw["remote_block_ids"], "remote_block_ids"),
                num_tokens=int(raw["num_tokens"]),
                notify_url=str(raw.get("notify_url", "")),
                remote_device_port=int(raw.get("remote_device_port", 0)),
                kv_digest=str(raw.get("kv_digest", "")),
                first_token=int(raw.get("first_token", -1)),
            )
        except KeyError as missing:
            raise ValueError(f"kv_transfer_params lacks {missing}") from None
        except (TypeError, ValueError) as bad:
            raise ValueError(f"kv_transfer_params: {bad}") from None
        if not params.remote_block_ids or params.num_tokens <= 0:
            raise ValueError("kv_transfer_params needs blocks and a positive num_tokens")
        return params


@dataclass(frozen=True)
class LoadSpec:
    request_id: str
    params: KVTransferParams
    local_block_ids: list[int]


@dataclass
class ConnectorMetadata:
    """What the worker does this step."""

    loads: list[LoadSpec] = field(default_factory=list)


class SchedulerConnector:
    """Scheduler side. ``role`` is ``"prompt"`` or ``"decode"``."""

    def __init__(
        self,
        role: str,
        *,
        cluster_id: int,
        host: str = "",
        port: int = 0,
        device_port: int = 0,
        notify_url: str = "",
        hold_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if role not in ("prompt", "decode"):
            raise ValueError("role must be 'prompt' or 'decode'")
        self.role = role
        self.cluster_id = cluster_id
        self.host, self.port, self.device_port = host, port, device_port
        self.notify_url = notify_url
        self.hold_timeout_s = hold_timeout_s
        self._clock = clock
        self._remote: dict[str, KVTransferParams] = {}
        self._pending: list[LoadSpec] = []
        self._held: dict[str, tuple[list[int], float]] = {}
        self._lock = threading.Lock()

    # decode side
    def get_num_new_matched_tokens(
        self, request_id: str, num_computed_tokens: int, params: KVTransferParams | None
    ) -> tuple[int, bool]:
        """Tokens of the prompt that the remote prompt server computed (loaded asynchronously)."""
        if self.role != "decode" or params is None:
            return 0, False
        self._remote[request_id] = params
        return max(0, params.num_tokens - num_computed_tokens), True

    def update_state_after_alloc(
        self, request_id: str, block_ids: list[int], num_external_tokens: int
    ) -> None:
        params = self._remote.pop(request_id, None)
        if params is None or num_external_tokens == 0:
            return
        count = len(params.remote_block_ids)
        if len(block_ids) < count:
            raise ValueError(f"{count} blocks to load, {len(block_ids)} allocated")
        self._pending.append(LoadSpec(request_id, params, list(block_ids[:count])))

    def build_connector_meta(self) -> ConnectorMetadata:
        meta = ConnectorMetadata(self._pending)
        self._pending = []
        return meta

    # prompt side
    def request_finished(
        self,
        request_id: str,
        block_ids: list[int],
        num_tokens: int,
        *,
        kv_digest: str = "",
        first_token: int = -1,
        hold_timeout_s: float | None = None,
    ) -> tuple[bool, dict[str, Any] | None]:
        """Keep the blocks until "finished" or the hold timeout (this request's, at most the connector's)
        and return the transfer parameters."""
        if self.role != "prompt":
            return False, None
        hold = self.hold_timeout_s if hold_timeout_s is None else min(hold_timeout_s, self.hold_timeout_s)
        with self._lock:
            if request_id in self._held:
                raise ValueError(f"request {request_id} already holds blocks")
            self._held[request_id] = (list(block_ids), self._clock() + hold)
        params = KVTransferParams(
            request_id=request_id,
            remote_cluster_id=self.cluster_id,
            remote_host=self.host,
            remote_port=self.port,
            remote_block_ids=list(block_ids),
            num_tokens=num_tokens,
            notify_url=self.notify_url,
            remote_device_port=self.device_port,
            kv_digest=kv_digest,
            first_token=first_token,
        )
        return True, params.to_dict()

    def finished_by_peer(self, request_id: str) -> list[int] | None:
        """The decode side's "finished" message: returns the blocks to free (None if not held)."""
        with self._lock:
            held = self._held.pop(request_id, None)
        return None if held is None else held[0]

    def expired(self) -> dict[str, list[int]]:
        """Holds past their timeout: removed and returned (request id -> blocks to free)."""
        now = self._clock()
        with self._lock:
            gone = {rid: blocks for rid, (blocks, deadline) in self._held.items() if deadline <= now}
            for rid in gone:
                del self._held[rid]
        return gone

    @property
    def held(self) -> dict[str, list[int]]:
        with self._lock:
            return {rid: list(blocks) for rid, (blocks, _) in self._held.items()}


def rank_table(ranks: list[tuple[int, str, int]]) -> str:
    """A version 1.2 rank table, one device per server: ``(server_id, device_ip, device_port)`` by rank."""
    return json.dumps(
        {
            "server_count": str(len(ranks)),
            "status": "completed",
            "version": "1.2",
            "server_list": [
                {
                    "server_id": str(server_id),
                    "host_ip": ip,
                    "device": [
                        {"device_id": "0", "device_ip": ip, "device_port": str(port), "rank_id": str(rank)}
                    ],
                }
                for rank, (server_id, ip, port) in enumerate(ranks)
            ],
        }
    )


class WorkerConnector:
    """Worker side: owns the links of one ``LLMDataDist`` and pulls blocks into the registered KV cache."""

    def __init__(
        self,
        datadist: Any,
        *,
        cluster_id: int,
        link_mode: str = LINK_CLUSTERS,
        local_host: str = "127.0.0.1",
        device_port: int = 0,
        link_timeout_s: float = 10.0,
        request_link: Callable[[KVTransferParams, str, dict[int, int], str], None] | None = None,
        cache_manager: Any = None,
    ) -> None:
        if link_mode not in (LINK_CLUSTERS, LINK_RANK_TABLE, LINK_EXTERNAL):
            raise ValueError(f"link_mode must be {LINK_CLUSTERS!r}, {LINK_RANK_TABLE!r} or {LINK_EXTERNAL!r}")
        if datadist is None and (cache_manager is None or link_mode != LINK_EXTERNAL):
            raise ValueError("without an LLMDataDist, pass a cache_manager and link_mode='external'")
        self.dd = datadist
        self.cm = cache_manager if cache_manager is not None else datadist.cache_manager
        self.cluster_id = cluster_id
        self.link_mode = link_mode
        self.local_host = local_host
        self.device_port = device_port
        self.link_timeout_s = link_timeout_s
        self.request_link = request_link
        self.cache: Any = None
        # remote cluster id -> (the address it was linked at, LLMClusterInfo or comm id)
        self._links: dict[int, tuple[tuple[str, int, int], Any]] = {}
        self._lock = threading.Lock()
        self._done_recving: set[str] = set()
        self._done_sending: set[str] = set()
        self.bytes_pulled = 0

    def register_kv_caches(self, kv: Any) -> None:
        """The paged cache to pull into (a ``CacheLinkKV``: its ``cache`` came from allocate/register)."""
        self.kv = kv
        self.cache = kv.cache

    def _link(self, params: KVTransferParams) -> None:
        """Link to the request's prompt cluster unless linked at that address (a restarted peer that moved
        to another port is unlinked and linked again)."""
        if self.link_mode == LINK_EXTERNAL:
            return
        remote = params.remote_cluster_id
        address = (params.remote_host, params.remote_port, params.remote_device_port)
        with self._lock:
            known = self._links.get(remote)
        if known is not None:
            if known[0] == address:
                return
            self._drop_link(remote)
        link = self._make_link(params)
        with self._lock:
            self._links[remote] = (address, link)

    def _make_link(self, params: KVTransferParams) -> Any:
        remote = params.remote_cluster_id
        if self.link_mode == LINK_CLUSTERS:
            info = ld.LLMClusterInfo()
            info.remote_cluster_id = remote
            info.append_local_ip_info(self.local_host, 0)
            info.append_remote_ip_info(params.remote_host, params.remote_port)
            ret, per = self.dd.link_clusters([info], timeout=int(self.link_timeout_s * 1000))
            if ret != ld.LLMStatusCode.LLM_SUCCESS and per and per[0] != ld.LLMStatusCode.LLM_ALREADY_LINK:
                raise TransferError(
                    f"link_clusters to {params.remote_host}:{params.remote_port} failed: {per}"
                )
            return info
        comm_name = f"cachelink-{remote}-{self.cluster_id}"
        ranks = {remote: 0, self.cluster_id: 1}
        table = rank_table(
            [
                (remote, params.remote_host, params.remote_device_port),
                (self.cluster_id, self.local_host, self.device_port),
            ]
        )
        if self.request_link is not None:  # the prompt side must call link at the same time
            self.request_link(params, comm_name, ranks, table)
        try:
            comm_id = self.dd.link(comm_name, ranks, table)
        except ld.LLMException as error:
            raise TransferError(f"link {comm_name} failed: {error}") from error
        wait_registered(self.dd, comm_id, self.link_timeout_s)
        return comm_id

    def start_load_kv(self, meta: ConnectorMetadata) -> None:
        """Link where needed and pull every request's blocks (blocking; run it off the event loop)."""
        for load in meta.loads:
            for attempt in (1, 2):
                self._link(load.params)
                try:
                    self.cm.pull_blocks(
                        ld.BlocksCacheKey(load.params.remote_cluster_id, 0),
                        self.cache,
                        load.params.remote_block_ids,
                        load.local_block_ids,
                    )
                    break
                except ld.LLMException as error:
                    relink = error.status_code in _RELINK_CODES and self.link_mode != LINK_EXTERNAL
                    if relink:  # LLM-DataDist's documented recovery: unlink, link again, retry once
                        self._drop_link(load.params.remote_cluster_id)
                    if not relink or attempt == 2:
                        raise TransferError(f"pull_blocks for {load.request_id} failed: {error}") from error
            self.bytes_pulled += len(load.local_block_ids) * int(self.kv.block_bytes)
            with self._lock:
                self._done_recving.add(load.request_id)

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Whole-request pulls: every layer is there once ``start_load_kv`` returned."""

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any) -> None:
        """Pull model: the prompt side's KV is already in its CacheLink cache."""

    def wait_for_save(self) -> None:
        """Nothing is pushed."""

    def mark_sent(self, request_id: str) -> None:
        """Prompt side: the decode side said "finished" (or the hold expired)."""
        with self._lock:
            self._done_sending.add(request_id)

    def get_finished(self) -> tuple[set[str], set[str]]:
        """(requests whose prompt blocks may be freed, requests whose load finished); each reported once."""
        with self._lock:
            sending, recving = self._done_sending, self._done_recving
            self._done_sending, self._done_recving = set(), set()
        return sending, recving

    def _drop_link(self, remote: int) -> None:
        with self._lock:
            known = self._links.pop(remote, None)
        if known is None:
            return
        link = known[1]
        try:
            if self.link_mode == LINK_CLUSTERS:
                self.dd.unlink_clusters([link], timeout=int(self.link_timeout_s * 1000), force=True)
            else:
                self.dd.unlink(link)
        except ld.LLMException:
            pass

    def close(self) -> None:
        """Unlink everything (before ``finalize``)."""
        for remote in list(self._links):
            self._drop_link(remote)


def wait_registered(datadist: Any, comm_id: int, timeout_s: float, poll_s: float = 0.01) -> None:
    """Poll ``query_register_mem_status`` until ``OK``; ``FAILED`` or the deadline raise ``TransferError``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = datadist.query_register_mem_status(comm_id)
        if status == ld.RegisterMemStatus.OK:
            return
        if status == ld.RegisterMemStatus.FAILED:
            raise TransferError(f"communication domain {comm_id} failed to register memory")
        if time.monotonic() > deadline:
            raise TransferError(f"communication domain {comm_id} not ready after {timeout_s} s")
        time.sleep(poll_s)
