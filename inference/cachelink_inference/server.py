"""Disaggregated serving over HTTP (aiohttp): a prefill server, a decode server and a router.

OpenAI-style ``POST /v1/completions`` (``prompt``, ``max_tokens``, ``stream``). The prefill server runs the
prompt, keeps its blocks and answers with ``kv_transfer_params``; the decode server pulls those blocks through
CacheLink, tells the prefill server "finished" (``POST /v1/kv/finished``) and streams the tokens; the router
chains the two. Prompt blocks are freed on "finished" or after the request's hold timeout
(``kv_transfer_params.hold_timeout_s`` of the prefill request, at most the server's). Bad input is a 4xx
with a JSON body ``{"error": {"message", "type"}}``. Every wait is bounded by a configurable timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import ClientError, ClientSession, ClientTimeout, web

import llm_datadist as ld
from cachelink_inference import weights
from cachelink_inference.connector import (
    LINK_CLUSTERS,
    LINK_EXTERNAL,
    LINK_RANK_TABLE,
    ConnectorMetadata,
    KVTransferParams,
    SchedulerConnector,
    TransferError,
    WorkerConnector,
    wait_registered,
)
from cachelink_inference.engine import Engine, OutOfBlocks, Sequence, blocks_needed, kv_digest
from cachelink_inference.kvcache import KV_DTYPE, CacheLinkKV
from cachelink_inference.model import Gemma3
from cachelink_inference.tokenizer import Tokenizer
from llm_datadist.ext import hosting as ext

log = logging.getLogger("cachelink_inference")
MAX_TOKENS_LIMIT = 4096


class BadRequest(Exception):
    """Client error: answered with a 4xx and a JSON body."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def error_response(message: str, status: int, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as bad:
        return error_response(str(bad), bad.status)
    except web.HTTPException as http:
        if http.status >= 400:
            return error_response(http.reason or "error", http.status)
        raise


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


@dataclass(frozen=True)
class Completion:
    prompt_ids: list[int]
    max_tokens: int
    stream: bool


def parse_completion(body: dict[str, Any], tokenizer: Any, max_prompt: int) -> Completion:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        if not prompt:
            raise BadRequest("prompt must not be empty")
        ids = tokenizer.encode(prompt)
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        if any(t < 0 or t >= tokenizer.vocab_size for t in prompt):
            raise BadRequest("prompt token ids out of the vocabulary")
        ids = list(prompt)
    else:
        raise BadRequest("prompt must be a non-empty string or list of token ids")
    max_tokens = body.get("max_tokens", 16)
    if (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise BadRequest(f"max_tokens must be an integer in [1, {MAX_TOKENS_LIMIT}]")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean")
    if len(ids) > max_prompt:
        raise BadRequest(f"prompt has {len(ids)} tokens, at most {max_prompt} are served", 413)
    return Completion(ids, max_tokens, stream)


@dataclass
class ServerConfig:
    role: str  # "prefill" | "decode"
    cluster_id: int
    host: str = "127.0.0.1"
    port: int = 0
    kv_port: int = 0  # link_clusters listen port (prefill) / rank-table device port
    num_blocks: int = 256
    block_size: int = 16
    registered: bool = False
    force_tcp: bool = False
    link_mode: str = LINK_CLUSTERS
    hold_timeout_s: float = 30.0
    transfer_timeout_ms: int = 10000
    link_timeout_s: float = 10.0
    notify_timeout_s: float = 5.0
    cache_dir: str | None = None
    debug: bool = False  # allows the negative-control knobs in kv_transfer_params
    extra_options: dict[str, str] = field(default_factory=dict)
    #: attach to a node agent's instance through its socket folder (on Kubernetes: the pod's CSI volume)
    #: instead of owning an LLMDataDist; the operator makes the links, this side only pulls
    attach_dir: str | None = None
    #: the instance to attach to (default: the only socket in ``attach_dir``)
    instance: str | None = None
    attach_timeout_s: float = 60.0


class AttachFailed(RuntimeError):
    """A server could not attach to a node agent's instance; the message says why and what to pass."""


def attached_instance(attach_dir: str, instance: str | None, timeout_s: float) -> Any:
    """Attach to ``instance`` (default: the only ``*.sock`` in ``attach_dir``, waited for up to ``timeout_s``:
    the agent adds the socket when the operator has made the instance); :class:`AttachFailed` otherwise."""
    from cachelink_agent.attach import attach  # noqa: PLC0415 - only workloads on a node need it

    folder = Path(attach_dir)
    deadline = time.monotonic() + timeout_s
    while instance is None:
        found = sorted(p.stem for p in folder.glob("*.sock"))
        if len(found) == 1:
            instance = found[0]
        elif len(found) > 1:
            raise AttachFailed(
                f"{attach_dir} holds {len(found)} instances ({', '.join(found)}); pick one with --instance"
            )
        elif time.monotonic() > deadline:
            raise AttachFailed(
                f"no instance socket in {attach_dir} after {timeout_s:g} s (is the CacheLink Ready, and is "
                "this pod selected by it?)"
            )
        else:
            time.sleep(0.2)
    while not (folder / f"{instance}.sock").exists():
        if time.monotonic() > deadline:
            raise AttachFailed(f"instance {instance!r} has no socket in {attach_dir} after {timeout_s:g} s")
        time.sleep(0.2)
    try:
        return attach(folder, instance, timeout=max(1.0, deadline - time.monotonic()))
    except (OSError, ValueError) as exc:  # refused, not a socket, a bad name, the agent said no
        raise AttachFailed(f"cannot attach to instance {instance!r} in {attach_dir}: {exc}") from exc


class Node:
    """What both servers share: the model, the LLMDataDist instance (or an agent's instance it attached to),
    the KV cache and one compute thread."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.dd: Any = None
        self.attached: Any = None
        if cfg.attach_dir is not None:  # first: a wrong folder fails before the model is loaded
            self.attached = attached_instance(cfg.attach_dir, cfg.instance, cfg.attach_timeout_s)
            cfg.cluster_id, cfg.link_mode = int(self.attached.cluster_id), LINK_EXTERNAL
        files = weights.load(cfg.cache_dir)
        self.model = Gemma3(files)
        self.tokenizer = Tokenizer(files.metadata)
        mc = self.model.cfg
        if self.attached is not None:
            cache_manager = self.attached
        else:
            cache_manager = self._init_datadist(mc.n_layers, mc.kv_dim)
        self.kv = CacheLinkKV(
            cache_manager,
            mc.n_layers,
            cfg.num_blocks,
            cfg.block_size,
            mc.kv_dim,
            registered=cfg.registered,
            blocks_cache_key=ld.BlocksCacheKey(cfg.cluster_id, 0),
        )
        self.engine = Engine(self.model, self.kv, allow_prefill=cfg.role == "prefill")
        self.engine.eos_id = self.tokenizer.eos_id
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self.transfers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="transfer")
        self.max_prompt = cfg.num_blocks * cfg.block_size // 2

    def _init_datadist(self, n_layers: int, kv_dim: int) -> Any:
        """An LLMDataDist of this process, initialised; returns its cache manager."""
        cfg = self.cfg
        block_bytes = cfg.block_size * kv_dim * np.dtype(KV_DTYPE).itemsize
        pool = 2 * n_layers * cfg.num_blocks * block_bytes + (8 << 20)
        role = ld.LLMRole.PROMPT if cfg.role == "prefill" else ld.LLMRole.DECODER
        self.dd = ld.LLMDataDist(role, cfg.cluster_id)
        conf = ld.LLMConfig()
        conf.device_id = 0
        conf.enable_cache_manager = True
        conf.sync_kv_timeout = cfg.transfer_timeout_ms
        if not cfg.registered:
            conf.mem_pool_cfg = json.dumps({"memory_size": pool})
        if cfg.role == "prefill" and cfg.link_mode == LINK_CLUSTERS:
            conf.listen_ip_info = f"{cfg.host}:{cfg.kv_port}"
        options = conf.generate_options()
        if cfg.force_tcp:
            options["cachelink.force_tcp"] = "1"
        options.update(cfg.extra_options)
        self.dd.init(options)
        return self.dd.cache_manager

    def worker(
        self, request_link: Callable[[KVTransferParams, str, dict[int, int], str], None] | None = None
    ) -> WorkerConnector:
        """The worker side of the connector over this node's instance and KV cache."""
        cfg = self.cfg
        worker = WorkerConnector(
            self.dd,
            cluster_id=cfg.cluster_id,
            cache_manager=self.attached,
            link_mode=cfg.link_mode,
            local_host=cfg.host,
            device_port=cfg.kv_port,
            link_timeout_s=cfg.link_timeout_s,
            request_link=request_link,
        )
        worker.register_kv_caches(self.kv)
        return worker

    async def run(self, pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def close(self) -> None:
        self.compute.shutdown(wait=True)
        self.transfers.shutdown(wait=True)
        self.kv.close()
        if self.attached is not None:
            self.attached.close()
        else:
            self.dd.finalize()

    def status(self) -> dict[str, Any]:
        c = self.engine.counters
        return {
            "role": self.cfg.role,
            "cluster_id": self.cfg.cluster_id,
            "free_blocks": self.engine.allocator.free_count,
            "num_blocks": self.kv.num_blocks,
            "prefills": c.prefills,
            "prefill_tokens": c.prefill_tokens,
            "decode_steps": c.decode_steps,
            "registered": self.cfg.registered,
        }


def _data_path(dd: Any) -> str:
    if dd is None:
        return "external"  # the operator's link: its data path is in the CacheLink's status
    try:
        paths = sorted({link.data_path for link in ext.links(dd)})
    except RuntimeError:  # finalized
        return "unknown"
    return ",".join(paths) or "none"


def _completion_chunk(rid: str, text: str, token_ids: list[int], finish: str | None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": "gemma-3-270m",
        "choices": [{"index": 0, "text": text, "token_ids": token_ids, "finish_reason": finish}],
    }


# ---------------------------------------------------------------- prefill


def _hold_timeout(raw: Any) -> float | None:
    """``kv_transfer_params.hold_timeout_s`` of a prefill request (capped by ``--hold-timeout``)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest("kv_transfer_params must be an object")
    value = raw.get("hold_timeout_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise BadRequest("kv_transfer_params.hold_timeout_s must be a positive number")
    return float(value)


class PrefillServer:
    def __init__(self, cfg: ServerConfig, node: Node) -> None:
        self.cfg, self.node = cfg, node
        self.notify_url = f"http://{cfg.host}:{cfg.port}/v1/kv/finished"
        self.scheduler = SchedulerConnector(
            "prompt",
            cluster_id=cfg.cluster_id,
            host=cfg.host,
            port=cfg.kv_port,
            device_port=cfg.kv_port,
            notify_url=self.notify_url,
            hold_timeout_s=cfg.hold_timeout_s,
        )
        self.worker = node.worker()
        self.freed_by_timeout = 0
        self.freed_by_finished = 0
        self.requests_sent = 0
        self._comms: dict[str, int] = {}  # communication domain name -> comm id (rank-table mode)
        self._comms_lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors_middleware])
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/kv/finished", self.finished)
        app.router.add_post("/v1/kv/link", self.link)
        app.router.add_get("/v1/kv/status", self.status)
        app.router.add_get("/health", health)
        app.cleanup_ctx.append(self._reaper)
        return app

    async def _reaper(self, _app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(0.1)
                for rid, blocks in self.scheduler.expired().items():
                    log.warning("request %s: no 'finished' within its hold timeout, blocks freed", rid)
                    self.node.engine.allocator.free(blocks)
                    self.worker.mark_sent(rid)
                    self.freed_by_timeout += 1
                # vLLM's scheduler frees a request's blocks when get_finished reports it sent; this server
                # freed them already (above, or on "finished"), so it only drains the report
                done_sending, _ = self.worker.get_finished()
                self.requests_sent += len(done_sending)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def completions(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        comp = parse_completion(body, self.node.tokenizer, self.node.max_prompt)
        engine = self.node.engine
        rid = body.get("request_id") or uuid.uuid4().hex
        hold = _hold_timeout(body.get("kv_transfer_params"))
        if not isinstance(rid, str) or rid in self.scheduler.held:
            raise BadRequest("request_id must be a string not in use", 409 if isinstance(rid, str) else 400)
        try:
            blocks = engine.allocator.allocate(blocks_needed(len(comp.prompt_ids), engine.block_size))
        except OutOfBlocks as full:
            return error_response(str(full), 503, "overloaded")
        seq = Sequence(comp.prompt_ids, blocks)
        try:
            started = time.perf_counter()
            first = await self.node.run(self.node.compute, engine.prefill, seq)
            prefill_s = time.perf_counter() - started
            digest = await self.node.run(
                self.node.compute, kv_digest, engine.kv, blocks, self.node.model.cfg.n_layers
            )
        except BaseException:
            engine.allocator.free(blocks)
            raise
        try:
            _, params = self.scheduler.request_finished(
                rid, blocks, len(comp.prompt_ids), kv_digest=digest, first_token=first, hold_timeout_s=hold
            )
        except ValueError as taken:  # the same id arrived twice at once
            engine.allocator.free(blocks)
            raise BadRequest(str(taken), 409) from None
        reply = _completion_chunk(rid, self.node.tokenizer.decode([first]), [first], "length")
        reply["kv_transfer_params"] = params
        reply["prompt_token_ids"] = comp.prompt_ids
        reply["timings"] = {"prefill_s": prefill_s}
        return web.json_response(reply)

    async def finished(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        rid = body.get("request_id")
        if not isinstance(rid, str):
            raise BadRequest("request_id must be a string")
        blocks = self.scheduler.finished_by_peer(rid)
        if blocks is None:
            return error_response(f"request {rid} holds no blocks", 404, "not_found")
        self.node.engine.allocator.free(blocks)
        self.worker.mark_sent(rid)
        self.freed_by_finished += 1
        return web.json_response({"freed_blocks": len(blocks)})

    async def link(self, request: web.Request) -> web.Response:
        """Rank-table mode: the decode side asks this side to join a communication domain (both call link)."""
        body = await read_json(request)
        try:
            comm_name = str(body["comm_name"])
            ranks = {int(k): int(v) for k, v in dict(body["cluster_rank_info"]).items()}
            table = str(body["rank_table"])
        except (KeyError, TypeError, ValueError):
            raise BadRequest("comm_name, cluster_rank_info and rank_table are required") from None

        def join() -> None:
            with self._comms_lock:
                old = self._comms.pop(comm_name, None)
            if old is not None:  # the decode side relinks (it restarted, or its pull timed out)
                with contextlib.suppress(ld.LLMException):
                    self.node.dd.unlink(old)
            try:
                comm_id = int(self.node.dd.link(comm_name, ranks, table))
            except ld.LLMException as error:
                log.warning("link %s failed: %s", comm_name, error)
                return
            try:
                wait_registered(self.node.dd, comm_id, self.cfg.link_timeout_s)
            except TransferError as error:
                log.warning("link %s failed: %s", comm_name, error)
                with contextlib.suppress(ld.LLMException):
                    self.node.dd.unlink(comm_id)
                return
            with self._comms_lock:
                self._comms[comm_name] = comm_id

        asyncio.get_running_loop().run_in_executor(self.node.transfers, join)
        return web.json_response({"accepted": True}, status=202)

    async def status(self, _request: web.Request) -> web.Response:
        out = self.node.status()
        out.update(
            held_requests=sorted(self.scheduler.held),
            freed_by_timeout=self.freed_by_timeout,
            freed_by_finished=self.freed_by_finished,
            requests_sent=self.requests_sent,
        )
        return web.json_response(out)

    def close(self) -> None:
        for comm in self._comms.values():
            with contextlib.suppress(ld.LLMException):
                self.node.dd.unlink(comm)


# ---------------------------------------------------------------- decode


class DecodeServer:
    def __init__(self, cfg: ServerConfig, node: Node) -> None:
        self.cfg, self.node = cfg, node
        self.scheduler = SchedulerConnector("decode", cluster_id=cfg.cluster_id)
        self.worker = node.worker(self._request_link)
        self.session: ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pull_s_total = 0.0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors_middleware])
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/kv/status", self.status)
        app.router.add_get("/health", health)
        app.cleanup_ctx.append(self._session_ctx)
        return app

    async def _session_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        self.session = ClientSession(timeout=ClientTimeout(total=self.cfg.notify_timeout_s))
        self._loop = asyncio.get_running_loop()
        yield
        await self.session.close()

    def _request_link(
        self, params: KVTransferParams, comm_name: str, ranks: dict[int, int], table: str
    ) -> None:
        """Called from the transfer thread: ask the prompt side to call ``link`` too, then return."""
        assert self._loop is not None
        assert self.session is not None
        base = params.notify_url.rsplit("/v1/", 1)[0]
        body = {
            "comm_name": comm_name,
            "cluster_rank_info": {str(k): v for k, v in ranks.items()},
            "rank_table": table,
        }

        async def post() -> None:
            assert self.session is not None
            async with self.session.post(f"{base}/v1/kv/link", json=body) as resp:
                if resp.status != 202:
                    raise TransferError(f"prompt side refused the link: {resp.status} {await resp.text()}")

        asyncio.run_coroutine_threadsafe(post(), self._loop).result(timeout=self.cfg.link_timeout_s)

    async def _notify(self, params: KVTransferParams) -> None:
        if not params.notify_url or self.session is None:
            return
        try:
            async with self.session.post(params.notify_url, json={"request_id": params.request_id}) as resp:
                await resp.read()
        except (TimeoutError, ClientError) as error:
            log.warning(
                "finished for %s not delivered (%s); the prompt side frees on timeout",
                params.request_id,
                error,
            )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        comp = parse_completion(body, self.node.tokenizer, self.node.max_prompt)
        raw = body.get("kv_transfer_params")
        try:
            params = KVTransferParams.from_dict(raw)
        except ValueError as bad:
            raise BadRequest(str(bad)) from None
        if params.num_tokens != len(comp.prompt_ids):
            raise BadRequest(
                f"kv_transfer_params.num_tokens {params.num_tokens} != prompt length {len(comp.prompt_ids)}"
            )
        if params.first_token < 0 or params.first_token >= self.node.tokenizer.vocab_size:
            raise BadRequest("kv_transfer_params.first_token is missing or out of the vocabulary")
        skip_pull = bool(isinstance(raw, dict) and raw.get("skip_pull")) and self.cfg.debug
        engine = self.node.engine
        bs = engine.block_size
        if len(params.remote_block_ids) != blocks_needed(params.num_tokens, bs):
            raise BadRequest("kv_transfer_params.remote_block_ids do not cover num_tokens")
        try:
            blocks = engine.allocator.allocate(blocks_needed(len(comp.prompt_ids) + comp.max_tokens, bs))
        except OutOfBlocks as full:
            return error_response(str(full), 503, "overloaded")
        try:
            return await self._serve(request, comp, params, blocks, skip_pull)
        finally:
            engine.allocator.free(blocks)

    async def _serve(
        self,
        request: web.Request,
        comp: Completion,
        params: KVTransferParams,
        blocks: list[int],
        skip_pull: bool,
    ) -> web.StreamResponse:
        node, engine = self.node, self.node.engine
        rid = params.request_id
        matched, _ = self.scheduler.get_num_new_matched_tokens(rid, 0, params)
        self.scheduler.update_state_after_alloc(rid, blocks, matched)
        meta = self.scheduler.build_connector_meta()
        started = time.perf_counter()
        if not skip_pull:
            try:
                await node.run(node.transfers, self.worker.start_load_kv, meta)
            except TransferError as error:
                return error_response(str(error), 502, "kv_transfer_failed")
        else:
            meta = ConnectorMetadata()
        pull_s = time.perf_counter() - started
        self.pull_s_total += pull_s
        self.worker.get_finished()
        await self._notify(params)
        pulled = blocks[: len(params.remote_block_ids)]
        digest = await node.run(node.compute, kv_digest, engine.kv, pulled, node.model.cfg.n_layers)
        seq = Sequence(comp.prompt_ids, blocks, [params.first_token])
        extra = {
            "kv_digest": digest,
            "prompt_kv_digest": params.kv_digest,
            "pull_s": pull_s,
            "kv_bytes": len(pulled) * node.kv.block_bytes,
            "data_path": _data_path(node.dd),
            "skip_pull": skip_pull,
        }
        tok = node.tokenizer

        async def tokens() -> AsyncIterator[int]:
            token = params.first_token
            yield token
            for _ in range(comp.max_tokens - 1):
                if token == tok.eos_id:
                    return
                token = await node.run(node.compute, engine.step, seq)
                yield token

        if not comp.stream:
            ids = [t async for t in tokens()]
            reply = _completion_chunk(rid, tok.decode(ids), ids, "length")
            reply["cachelink"] = extra
            return web.json_response(reply)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        first = True
        async for token in tokens():
            chunk = _completion_chunk(rid, tok.decode([token]), [token], None)
            if first:
                chunk["cachelink"] = extra
                first = False
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def status(self, _request: web.Request) -> web.Response:
        out = self.node.status()
        out.update(bytes_pulled=self.worker.bytes_pulled, pull_s_total=self.pull_s_total)
        return web.json_response(out)


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


# ---------------------------------------------------------------- router


@dataclass
class RouterConfig:
    prefill_url: str
    decode_urls: list[str]
    host: str = "127.0.0.1"
    port: int = 0
    prefill_timeout_s: float = 60.0
    decode_timeout_s: float = 300.0
    connect_timeout_s: float = 5.0


class Router:
    """Sends a request to prefill, its ``kv_transfer_params`` to a decode server (round robin); streams."""

    def __init__(self, cfg: RouterConfig) -> None:
        if not cfg.decode_urls:
            raise ValueError("at least one decode server is needed")
        self.cfg = cfg
        self._next = itertools.cycle(range(len(cfg.decode_urls)))
        self.session: ClientSession | None = None
        self.errors = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors_middleware])
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/health", health)
        app.cleanup_ctx.append(self._session_ctx)
        return app

    async def _session_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        self.session = ClientSession()
        yield
        await self.session.close()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        body = await read_json(request)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("stream must be a boolean")
        timeout = ClientTimeout(total=self.cfg.prefill_timeout_s, sock_connect=self.cfg.connect_timeout_s)
        to_prefill = {k: v for k, v in body.items() if k in ("prompt", "max_tokens", "request_id")}
        to_prefill.update(stream=False, kv_transfer_params={"do_remote_decode": True})
        try:
            async with self.session.post(
                f"{self.cfg.prefill_url}/v1/completions", json=to_prefill, timeout=timeout
            ) as resp:
                prefill = await resp.json(content_type=None)
                if resp.status != 200:
                    return web.json_response(prefill, status=resp.status)
        except (TimeoutError, ClientError, json.JSONDecodeError) as error:
            self.errors += 1
            return error_response(f"prefill server failed: {error!r}", 502, "upstream_error")
        params = prefill["kv_transfer_params"]
        decode_url = self.cfg.decode_urls[next(self._next)]
        to_decode = dict(body, kv_transfer_params=params, stream=stream)
        timeout = ClientTimeout(total=self.cfg.decode_timeout_s, sock_connect=self.cfg.connect_timeout_s)
        response: web.StreamResponse | None = None
        try:
            async with self.session.post(
                f"{decode_url}/v1/completions", json=to_decode, timeout=timeout
            ) as resp:
                if resp.status != 200:
                    payload = await resp.json(content_type=None)
                    await self._release(params)
                    return web.json_response(payload, status=resp.status if resp.status < 500 else 502)
                if not stream:
                    return web.json_response(await resp.json())
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                async for line in resp.content:
                    await response.write(line)
                await response.write_eof()
                return response
        except (TimeoutError, ClientError, json.JSONDecodeError) as error:
            self.errors += 1
            await self._release(params)
            message = f"decode server {decode_url} failed: {error!r}"
            if response is None:
                return error_response(message, 502, "upstream_error")
            err = json.dumps({"error": {"message": message, "type": "upstream_error"}})
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write(f"data: {err}\n\n".encode())
                await response.write_eof()
            return response

    async def _release(self, params: dict[str, Any]) -> None:
        """Decode failed: tell the prompt side to free the request's blocks now (else its timeout does)."""
        assert self.session is not None
        url = params.get("notify_url")
        if not url:
            return
        with contextlib.suppress(ClientError, asyncio.TimeoutError):
            async with self.session.post(
                url,
                json={"request_id": params["request_id"]},
                timeout=ClientTimeout(total=self.cfg.connect_timeout_s),
            ) as resp:
                await resp.read()


# ---------------------------------------------------------------- process entry


async def serve(app: web.Application, host: str, port: int, on_ready: Callable[[int], None]) -> None:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    on_ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run_server(cfg: ServerConfig, on_ready: Callable[[int], None]) -> None:
    if cfg.port == 0:
        cfg.port = free_port(cfg.host)
    if cfg.kv_port == 0:
        cfg.kv_port = free_port(cfg.host)
    node = Node(cfg)
    server: PrefillServer | DecodeServer = (
        PrefillServer(cfg, node) if cfg.role == "prefill" else DecodeServer(cfg, node)
    )
    try:
        asyncio.run(serve(server.app(), cfg.host, cfg.port, on_ready))
    finally:
        if isinstance(server, PrefillServer):
            server.close()
        else:
            server.worker.close()
        node.close()


def run_router(cfg: RouterConfig, on_ready: Callable[[int], None]) -> None:
    if cfg.port == 0:
        cfg.port = free_port(cfg.host)
    asyncio.run(serve(Router(cfg).app(), cfg.host, cfg.port, on_ready))


def die_during_pull_hook() -> None:
    """Test hook (``CACHELINK_INFERENCE_DIE_IN_PULL=1``): the process kills itself during its first pull."""
    if os.environ.get("CACHELINK_INFERENCE_DIE_IN_PULL") != "1":
        return
    original = WorkerConnector.start_load_kv

    def dying(self: WorkerConnector, meta: ConnectorMetadata) -> None:
        threading.Timer(0.001, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
        original(self, meta)
        time.sleep(10)  # the pull was quicker than the timer: die before anything is answered

    WorkerConnector.start_load_kv = dying  # type: ignore[method-assign]


__all__ = [
    "LINK_CLUSTERS",
    "LINK_RANK_TABLE",
    "Router",
    "RouterConfig",
    "ServerConfig",
    "run_router",
    "run_server",
]
