"""The instance manager: desired state, the running instances, and the loops that keep them in line.

Every change is applied, then written to the state file, then answered; a change that fails leaves
neither the engine nor the file half-changed. On start the manager restores every instance from the
file (adopting its pool, so caches survive) and relinks its links; a background loop relinks broken
links, restarts dead workers with backoff and finalizes instances whose owner was not reconfirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from cachelink_agent import models, option_checks, runtime, state, status_view
from cachelink_agent.config import AgentConfig
from cachelink_agent.errors import ApiError, EngineError
from cachelink_agent.metrics import AgentMetrics
from cachelink_agent.records import Instance, LinkAttempt
from cachelink_agent.supervisor import Backend, InProcessBackend, WorkerBackend, WorkerGone

_log = logging.getLogger("cachelink_agent.instances")
_HEALTHY_AFTER_S = 60.0


class InstanceManager:
    """Owns the node's instances and the state file."""

    def __init__(self, config: AgentConfig, metrics: AgentMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.store = state.StateStore(config.state_dir)
        self.instances: dict[str, Instance] = {}
        self.ready = False
        self.closing = False
        self._save_lock = asyncio.Lock()
        #: changes asked to be saved, and how many of them the file holds (saves are coalesced)
        self._changes = 0
        self._saved_changes = 0
        self._tasks: list[asyncio.Task[None]] = []
        #: the pod sockets an instance should serve (path -> pod uid): set by the CSI plugin
        self.pod_sockets_of: Callable[[str, models.AttachPolicy], dict[str, str]] = lambda name, policy: {}

    # ------------------------------------------------------------------------------ plumbing

    def _runtime_config(self, instance: Instance, adopt: bool) -> runtime.RuntimeConfig:
        spec, cfg = instance.spec, self.config
        return runtime.RuntimeConfig(
            name=instance.name,
            node_name=cfg.node_name,
            role=spec.role,
            cluster_id=spec.cluster_id,
            options=dict(spec.options),
            pool_dir=str(cfg.pool_dir),
            host_id=cfg.host_id,
            bound_listen=instance.record.bound_listen,
            adopt=adopt,
            in_process=cfg.in_process,
            attach_socket=str(self.socket_path(instance.name)),
            attach_uids=list(spec.attach.uids),
            attach_pod_uids=list(spec.attach.pod_uids),
            lease_seconds=cfg.lease_seconds,
            max_lease_seconds=cfg.max_lease_seconds,
            lease_file=str(self.lease_path(instance.name)),
        )

    def socket_path(self, name: str) -> Path:
        """The attach socket of an instance."""
        return self.config.run_dir / f"{name}.sock"

    def lease_path(self, name: str) -> Path:
        """The lease file of an instance's attach sessions."""
        return self.config.state_dir / "leases" / f"{name}.json"

    async def _save(self) -> None:
        """Persist every instance record; returns once the file holds this call's change.

        Concurrent callers share writes: a write that starts after a change covers it, so a burst of N
        changes costs a couple of writes of the whole file, not N.
        """
        if self.closing:  # shutting down: the file keeps what it has, for the next start
            return
        self._changes += 1
        mine = self._changes
        async with self._save_lock:
            if self._saved_changes >= mine:
                return
            upto = self._changes
            # encoded here, on the loop, with no await in between: a consistent snapshot without
            # copying every record first (the records are validated models already)
            data = self.store.encode(
                state.AgentState.model_construct(
                    node_name=self.config.node_name,
                    instances={
                        name: inst.record for name, inst in self.instances.items() if not inst.stopping
                    },
                )
            )
            await asyncio.to_thread(self.store.write, data)
            self._saved_changes = upto

    async def _call(
        self, instance: Instance, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        backend = instance.backend
        if backend is None or instance.state not in ("running",):
            raise ApiError(
                503,
                "instance_unavailable",
                f"instance {instance.name} is {instance.state}: {instance.last_error or 'retry later'}",
            )
        try:
            return await backend.call(op, args, timeout or self.config.request_timeout)
        except WorkerGone as error:
            raise ApiError(
                503, "instance_unavailable", f"instance {instance.name}: {error}; retry later"
            ) from error
        except TimeoutError as error:
            raise ApiError(503, "timeout", f"instance {instance.name} did not answer {op} in time") from error

    async def _start_backend(self, instance: Instance, adopt: bool) -> None:
        cfg = self.config
        run_config = self._runtime_config(instance, adopt)
        backend: Backend
        if cfg.in_process:
            backend, result = await InProcessBackend.start(run_config, cfg.worker_start_timeout)
        else:
            backend, result = await WorkerBackend.start(
                run_config, cfg.worker_start_timeout, cfg.log_format, cfg.log_level
            )
        instance.backend = backend
        instance.incarnation = int(result["incarnation"])
        instance.listen_address = str(result["listen_address"])
        instance.pid = int(result["pid"])
        instance.state = "running"
        instance.last_error = ""
        instance.started_at = time.monotonic()
        if instance.listen_address:
            instance.record.bound_listen = instance.listen_address
        if instance.quarantine:  # a restarted worker refuses new sessions too
            await self._set_quarantine(instance, instance.quarantine)
        instance.pod_sockets = {}  # a new backend serves none yet
        await self._push_pod_sockets(instance)

    async def _push_pod_sockets(self, instance: Instance) -> None:
        """Make the backend serve the pod sockets the CSI plugin grants (call under the instance's lock)."""
        want = self.pod_sockets_of(instance.name, instance.spec.attach)
        if want == instance.pod_sockets or instance.state != "running":
            return
        try:
            served = await self._call(instance, "set_pod_sockets", {"sockets": want})
        except ApiError as error:
            _log.warning("pod sockets of %s not updated: %s", instance.name, error.message)
            return
        instance.pod_sockets = dict(served)

    async def sync_pod_sockets(self) -> None:
        """Push every live instance's pod sockets (after a CSI volume came or went)."""

        async def one(instance: Instance) -> None:
            async with instance.lock:
                if not self._gone(instance):
                    await self._push_pod_sockets(instance)

        await asyncio.gather(*(one(i) for i in list(self.instances.values())))

    def granting(self, allowed: Callable[[models.AttachPolicy], bool]) -> list[str]:
        """Names of the live instances whose attach policy ``allowed`` accepts."""
        return sorted(
            name for name, inst in self.instances.items() if not inst.stopping and allowed(inst.spec.attach)
        )

    def _gone(self, instance: Instance) -> bool:
        """Deleted or shutting down (a method, so type narrowing does not survive awaits)."""
        return instance.stopping or self.closing

    def _supervise(self, instance: Instance) -> None:
        if instance.supervisor is None or instance.supervisor.done():
            instance.supervisor = asyncio.create_task(
                self._supervise_loop(instance), name=f"sup-{instance.name}"
            )

    async def _supervise_loop(self, instance: Instance) -> None:
        """Restart a dead worker (or a failed start) with backoff, adopting its pool and relinking."""
        failures = 0
        while not instance.stopping:
            if instance.backend is not None:
                await instance.backend.wait_exit()
                if instance.stopping or self.closing:
                    return
                _log.error("worker of %s (pid %d) exited; restarting", instance.name, instance.pid)
                self.metrics.worker_restarts.inc()
                if time.monotonic() - instance.started_at > _HEALTHY_AFTER_S:
                    failures = 0
                instance.backend = None
                instance.state = "restarting"
            delay = min(self.config.restart_backoff_max, 0.25 * 2**failures)
            failures += 1
            await asyncio.sleep(delay)
            if instance.stopping or self.closing:
                return
            async with instance.lock:
                if self._gone(instance):
                    return
                try:
                    await self._start_backend(instance, adopt=True)
                except (EngineError, WorkerGone, TimeoutError, OSError) as error:
                    instance.state = "failed" if failures > 3 else "restarting"
                    instance.last_error = f"restart failed: {error}"
                    _log.error("restart of %s failed (attempt %d): %s", instance.name, failures, error)
                    continue
                instance.restarts += 1
                _log.info(
                    "instance %s restarted (pid %d, incarnation %d)",
                    instance.name,
                    instance.pid,
                    instance.incarnation,
                )
                await self._save()
                await self._restore_links(instance)

    # ------------------------------------------------------------------------------- restore

    async def restore(self) -> None:
        """Bring back every instance of the state file, then start the background loop."""
        loaded = await asyncio.to_thread(self.store.load)
        self._remove_orphans(set(loaded.instances))
        for name, record in loaded.instances.items():
            try:
                spec = record.instance_spec()
            except ValueError as error:
                _log.error("state entry %s is invalid, skipping it: %s", name, error)
                continue
            self.instances[name] = Instance(name, record, spec)
        await asyncio.gather(*(self._restore_one(inst) for inst in list(self.instances.values())))
        self._tasks.append(asyncio.create_task(self._background_loop(), name="reconcile"))
        self.ready = True
        _log.info("restored %d instances", len(self.instances))

    async def _restore_one(self, instance: Instance) -> None:
        async with instance.lock:
            try:
                await self._start_backend(instance, adopt=True)
            except (EngineError, WorkerGone, TimeoutError, OSError) as error:
                instance.state = "restarting"
                instance.last_error = f"restore failed: {error}"
                _log.error("restoring %s failed: %s", instance.name, error)
        self._supervise(instance)
        if instance.state == "running":
            await self._restore_links(instance)

    def _remove_orphans(self, known: set[str]) -> None:
        """Pool and lease files of instances the state does not know (a crash between init and save)."""
        prefix = runtime.pool_stem(self.config.node_name, "")
        for path in self.config.pool_dir.glob(f"{prefix}*"):
            stem = path.name
            for suffix in runtime.POOL_SUFFIXES:
                stem = stem.removesuffix(suffix)
            name = stem[len(prefix) :]
            if models.is_instance_name(name) and name not in known:
                _log.warning("removing orphaned pool file %s", path)
                path.unlink(missing_ok=True)
        lease_dir = self.config.state_dir / "leases"
        for path in lease_dir.glob("*.json") if lease_dir.is_dir() else []:
            if path.stem not in known:
                path.unlink(missing_ok=True)

    async def _restore_links(self, instance: Instance) -> None:
        for remote_id, spec in list(instance.record.links.items()):
            with contextlib.suppress(ApiError):
                await self._link(instance, int(remote_id), spec)
        for comm_name, comm in list(instance.record.comm_links.items()):
            with contextlib.suppress(ApiError):
                await self._comm_link(instance, comm_name, comm)

    async def _background_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval)
            for instance in list(self.instances.values()):
                try:
                    await self._reconcile(instance)
                except ApiError as error:
                    _log.debug("reconcile of %s: %s", instance.name, error.message)
                except Exception:  # noqa: BLE001 - the loop must outlive any one instance's failure
                    _log.exception("reconcile of %s failed", instance.name)

    async def _reconcile(self, instance: Instance) -> None:
        if instance.stopping:
            return
        silent = time.monotonic() - instance.confirmed_at
        if silent > self.config.owner_finalize_ttl:
            _log.warning(
                "owner %s of instance %s not confirmed for %.0f s: finalizing it",
                instance.spec.owner,
                instance.name,
                silent,
            )
            self.metrics.owner_expired.inc()
            with contextlib.suppress(ApiError):
                await self.delete_instance(instance.name)
            return
        if silent > self.config.owner_ttl and not instance.quarantine:
            _log.warning(
                "owner %s of instance %s not confirmed for %.0f s: quarantined (no new links or attach "
                "sessions) until it is, finalized after %.0f s",
                instance.spec.owner,
                instance.name,
                silent,
                self.config.owner_finalize_ttl,
            )
            self.metrics.owner_quarantined.inc()
            await self._set_quarantine(instance, f"owner {instance.spec.owner} was not reconfirmed")
        if instance.quarantine:
            return  # no relinking either: links are for a live owner
        if instance.state != "running":
            return
        status = await self._refresh(instance)
        engine_links = {
            link["remote_cluster_id"]: link for link in status.get("links", []) if not link["comm_id"]
        }
        for remote_id, spec in list(instance.record.links.items()):
            link = engine_links.get(int(remote_id))
            if link is None or link["state"] != "linked":
                async with instance.lock:
                    if remote_id in instance.record.links and not instance.stopping:
                        with contextlib.suppress(ApiError):
                            await self._link(instance, int(remote_id), spec)

    async def _set_quarantine(self, instance: Instance, reason: str) -> None:
        """Refuse (``reason``) or admit again ("") new links and attach sessions of ``instance``."""
        instance.quarantine = reason
        if instance.state == "running":
            with contextlib.suppress(ApiError):
                await self._call(instance, "set_quarantine", {"reason": reason})

    def _confirmed(self, instance: Instance) -> None:
        instance.confirmed_at = time.monotonic()
        instance.record.owner_confirmed_at = time.time()

    async def _refresh(self, instance: Instance) -> dict[str, Any]:
        status: dict[str, Any] = await self._call(instance, "status", {})
        instance.last_status = status
        self.metrics.feed_status(instance.name, status)
        return status

    # ----------------------------------------------------------------------------- instances

    def _get(self, name: str) -> Instance:
        instance = self.instances.get(name)
        if instance is None or instance.stopping:
            raise ApiError(404, "not_found", f"instance {name} does not exist")
        return instance

    def reserved_pool_bytes(self, exclude: str = "") -> int:
        """Pool bytes the live instances reserve."""
        return sum(
            inst.pool_bytes for name, inst in self.instances.items() if name != exclude and not inst.stopping
        )

    async def put_instance(self, name: str, spec: models.InstanceSpec) -> models.PutResult:
        """Create, confirm (same spec) or replace (``spec.replace``) an instance."""
        needed = option_checks.validate_options(spec)
        existing = self.instances.get(name)
        action: models.Action = "created"
        if existing is not None and not existing.stopping:
            async with existing.lock:
                if existing.spec.desired() == spec.desired():
                    self._confirmed(existing)
                    if existing.quarantine:
                        await self._set_quarantine(existing, "")
                    await self._save()
                    return models.PutResult(name=name, action="unchanged", instance=await self.status(name))
                if not spec.replace:
                    raise ApiError(
                        409,
                        "conflict",
                        f"instance {name} exists with a different spec; send "
                        "replace=true to finalize and re-init it",
                    )
            await self.delete_instance(name)
            action = "replaced"
        elif existing is not None:
            raise ApiError(409, "conflict", f"instance {name} is being finalized; retry later")
        budget = self.config.max_pool_bytes
        reserved = self.reserved_pool_bytes(exclude=name)
        if reserved + needed > budget:
            raise ApiError(
                409,
                "pool_budget_exceeded",
                f"instance {name} needs {needed} pool bytes; {reserved} of the node's {budget} are reserved",
            )
        record = state.InstanceRecord(spec=spec.desired())
        instance = Instance(name, record, spec)
        self.instances[name] = instance
        async with instance.lock:
            try:
                await self._start_backend(instance, adopt=False)
            except EngineError as error:
                del self.instances[name]
                raise option_checks.engine_failure(
                    error, f"init of {name} failed", options_call=True
                ) from error
            except (WorkerGone, TimeoutError, OSError) as error:
                del self.instances[name]
                raise ApiError(503, "instance_unavailable", f"init of {name} failed: {error}") from error
            try:
                await self._save()
            except OSError as error:
                instance.stopping = True
                del self.instances[name]
                if instance.backend is not None:
                    await instance.backend.stop(True, self.config.request_timeout)
                raise ApiError(503, "state_write_failed", f"cannot write the state file: {error}") from error
        self._supervise(instance)
        _log.info(
            "instance %s %s (role %s, cluster %d, owner %s, listen %s)",
            name,
            action,
            spec.role,
            spec.cluster_id,
            spec.owner,
            instance.listen_address or "-",
        )
        return models.PutResult(name=name, action=action, instance=await self.status(name))

    async def delete_instance(self, name: str) -> models.DeleteResult:
        """Unlink everything and finalize."""
        instance = self._get(name)
        async with instance.lock:
            if instance.stopping:
                raise ApiError(404, "not_found", f"instance {name} does not exist")
            instance.stopping = True
            await self._save()
            backend = instance.backend
            if backend is not None and instance.state == "running":
                for remote_id in list(instance.record.links):
                    with contextlib.suppress(Exception):
                        await backend.call(
                            "unlink",
                            {"remote_cluster_id": int(remote_id), "timeout_ms": 1000, "force": True},
                            self.config.request_timeout,
                        )
                for comm_name in list(instance.record.comm_links):
                    with contextlib.suppress(Exception):
                        await backend.call(
                            "comm_unlink", {"comm_name": comm_name}, self.config.request_timeout
                        )
            if backend is not None:
                await backend.stop(True, self.config.request_timeout)
            runtime.remove_pool_files(
                str(self.config.pool_dir), runtime.pool_stem(self.config.node_name, name)
            )
            self.lease_path(name).unlink(missing_ok=True)
            self.socket_path(name).unlink(missing_ok=True)
            if instance.supervisor is not None:
                instance.supervisor.cancel()
            self.instances.pop(name, None)
        _log.info("instance %s finalized", name)
        return models.DeleteResult(name=name, deleted=True)

    async def confirm_owners(self, owners: list[str]) -> models.OwnerConfirmResult:
        """Reset the TTL of every instance owned by one of ``owners``."""
        wanted = set(owners)
        confirmed = []
        for name, instance in list(self.instances.items()):
            if instance.spec.owner in wanted and not instance.stopping:
                self._confirmed(instance)
                if instance.quarantine:
                    await self._set_quarantine(instance, "")
                confirmed.append(name)
        if confirmed:
            await self._save()
        return models.OwnerConfirmResult(confirmed=sorted(confirmed))

    # ---------------------------------------------------------------------------------- links

    async def _link(self, instance: Instance, remote_id: int, spec: models.LinkSpec) -> models.Action:
        """Link (or relink a broken/stale link); records the attempt; raises 424 on failure."""
        status = instance.last_status if instance.last_status else await self._refresh(instance)
        current = next(
            (
                link
                for link in status.get("links", [])
                if link["remote_cluster_id"] == remote_id and not link["comm_id"]
            ),
            None,
        )
        action: models.Action = "linked"
        if current is not None:
            action = "relinked"
            await self._call(
                instance,
                "unlink",
                {"remote_cluster_id": remote_id, "timeout_ms": spec.timeout_ms, "force": True},
            )
        try:
            code = await self._call(
                instance,
                "link",
                {
                    "remote_cluster_id": remote_id,
                    "remote_address": spec.remote_address,
                    "local_ip": spec.local_ip,
                    "timeout_ms": spec.timeout_ms,
                },
                timeout=spec.timeout_ms / 1000 + self.config.request_timeout,
            )
        except EngineError as error:
            instance.attempts[remote_id] = LinkAttempt(
                error.llm_status or "LLM_FAILED", error.message, spec.remote_address
            )
            raise option_checks.engine_failure(error, f"link {instance.name} -> {remote_id}") from error
        finally:
            with contextlib.suppress(ApiError):
                await self._refresh(instance)
        if code != "LLM_SUCCESS":
            self.metrics.link_failures.labels(code).inc()
            instance.attempts[remote_id] = LinkAttempt(
                code, f"link to {spec.remote_address} failed", spec.remote_address
            )
            raise ApiError(
                424,
                "link_failed",
                f"link {instance.name} -> cluster {remote_id} at {spec.remote_address} failed: {code}",
                llm_status=code,
            )
        instance.attempts[remote_id] = LinkAttempt(code, "", spec.remote_address)
        return action

    def _refuse_if_quarantined(self, instance: Instance) -> None:
        if instance.quarantine:
            raise ApiError(
                409, "quarantined", f"instance {instance.name} is quarantined: {instance.quarantine}"
            )

    async def put_link(self, name: str, remote_id: int, spec: models.LinkSpec) -> models.PutResult:
        """Link idempotently: a live link with the same spec is left alone."""
        instance = self._get(name)
        self._refuse_if_quarantined(instance)
        async with instance.lock:
            key = str(remote_id)
            status = await self._refresh(instance)
            live = any(
                link["remote_cluster_id"] == remote_id and link["state"] == "linked" and not link["comm_id"]
                for link in status.get("links", [])
            )
            if live and instance.record.links.get(key) == spec:
                return models.PutResult(
                    name=name, action="unchanged", link=status_view.link_status(instance, remote_id)
                )
            action = await self._link(instance, remote_id, spec)
            instance.record.links[key] = spec
            await self._save()
            return models.PutResult(
                name=name,
                action=action,
                link=status_view.link_status(instance, remote_id),
            )

    async def delete_link(
        self, name: str, remote_id: int, force: bool, timeout_ms: int
    ) -> models.DeleteResult:
        """Unlink (a graceful unlink that fails falls back to dropping the local end)."""
        instance = self._get(name)
        async with instance.lock:
            known = instance.record.links.pop(str(remote_id), None) is not None
            instance.attempts.pop(remote_id, None)
            await self._save()
            code = "LLM_SUCCESS"
            if instance.state == "running":
                code = await self._call(
                    instance,
                    "unlink",
                    {"remote_cluster_id": remote_id, "timeout_ms": timeout_ms, "force": force},
                )
                if code != "LLM_SUCCESS" and not force:
                    code = await self._call(
                        instance,
                        "unlink",
                        {"remote_cluster_id": remote_id, "timeout_ms": timeout_ms, "force": True},
                    )
                with contextlib.suppress(ApiError):
                    await self._refresh(instance)
        return models.DeleteResult(name=name, deleted=known, detail=code)

    async def _comm_link(self, instance: Instance, comm_name: str, spec: models.CommLinkSpec) -> int:
        try:
            comm_id = int(
                await self._call(
                    instance,
                    "comm_link",
                    {
                        "comm_name": comm_name,
                        "cluster_rank_info": {str(k): v for k, v in spec.cluster_rank_info.items()},
                        "rank_table": spec.rank_table,
                    },
                )
            )
        except EngineError as error:
            instance.comm_attempts[comm_name] = LinkAttempt(error.llm_status or "LLM_FAILED", error.message)
            raise option_checks.engine_failure(error, f"comm link {comm_name} of {instance.name}") from error
        instance.comm_attempts[comm_name] = LinkAttempt("LLM_SUCCESS")
        return comm_id

    async def put_comm_link(self, name: str, comm_name: str, spec: models.CommLinkSpec) -> models.PutResult:
        """Join a communication domain (idempotent while joined with the same spec)."""
        instance = self._get(name)
        self._refuse_if_quarantined(instance)
        async with instance.lock:
            if instance.spec.cluster_id not in spec.cluster_rank_info:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"cluster_rank_info must contain this instance's cluster id {instance.spec.cluster_id}",
                    fields=[{"loc": "cluster_rank_info", "msg": "missing own cluster id"}],
                )
            status = await self._refresh(instance)
            joined = comm_name in status.get("comm_links", {})
            if joined and instance.record.comm_links.get(comm_name) == spec:
                return models.PutResult(
                    name=name, action="unchanged", comm_link=status_view.comm_status(instance, comm_name)
                )
            if joined:
                await self._call(instance, "comm_unlink", {"comm_name": comm_name})
            await self._comm_link(instance, comm_name, spec)
            instance.record.comm_links[comm_name] = spec
            await self._save()
            await self._refresh(instance)
            return models.PutResult(
                name=name,
                action="relinked" if joined else "linked",
                comm_link=status_view.comm_status(instance, comm_name),
            )

    async def delete_comm_link(self, name: str, comm_name: str) -> models.DeleteResult:
        """Leave a communication domain."""
        instance = self._get(name)
        async with instance.lock:
            known = instance.record.comm_links.pop(comm_name, None) is not None
            instance.comm_attempts.pop(comm_name, None)
            await self._save()
            if instance.state == "running":
                await self._call(instance, "comm_unlink", {"comm_name": comm_name})
                with contextlib.suppress(ApiError):
                    await self._refresh(instance)
        return models.DeleteResult(name=name, deleted=known)

    # --------------------------------------------------------------------------------- status

    def _status_of(self, instance: Instance) -> models.InstanceStatus:
        return status_view.instance_status(instance, self.config.mode, str(self.socket_path(instance.name)))

    async def status(self, name: str) -> models.InstanceStatus:
        """An instance's status, refreshed from the engine when it is running."""
        instance = self._get(name)
        if instance.state == "running":
            with contextlib.suppress(ApiError):
                await self._refresh(instance)
        return self._status_of(instance)

    async def list_status(self, owners: Collection[str] | None = None) -> list[models.InstanceStatus]:
        """Every instance's status, or only those of ``owners`` (only those engines are asked)."""
        names = sorted(
            n
            for n, i in self.instances.items()
            if not i.stopping and (owners is None or i.spec.owner in owners)
        )
        results = await asyncio.gather(*(self.status(n) for n in names), return_exceptions=True)
        return [r for r in results if isinstance(r, models.InstanceStatus)]

    def owners(self) -> dict[str, list[str]]:
        """The names of each owner's live instances, sorted."""
        found: dict[str, list[str]] = {}
        for name, instance in sorted(self.instances.items()):
            if not instance.stopping:
                found.setdefault(instance.spec.owner, []).append(name)
        return found

    def listen_ports(self) -> list[models.ListenPort]:
        """The ports the live instances listen on (the configured one while starting), by port."""
        held = [port for instance in self.instances.values() if (port := instance.listen_port()) is not None]
        return sorted(held, key=lambda p: (p.port, p.instance))

    def metric_snapshots(self) -> list[dict[str, Any]]:
        """Latest statuses for /metrics (no engine calls at scrape time)."""
        out = []
        for instance in list(self.instances.values()):
            status = self._status_of(instance)
            out.append(
                {
                    "name": instance.name,
                    "state": status.state,
                    "links": [link.model_dump() for link in status.links],
                    "pool_size": sum(p.size for p in status.pools),
                    "pool_used": sum(p.used for p in status.pools),
                }
            )
        return out

    # ------------------------------------------------------------------------------- shutdown

    async def shutdown(self) -> None:
        """SIGTERM: stop every instance without finalizing (a restart resumes them)."""
        self.closing = True
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for instance in list(self.instances.values()):
            if instance.supervisor is not None:
                instance.supervisor.cancel()
        await asyncio.gather(
            *(
                inst.backend.stop(False, self.config.request_timeout)
                for inst in self.instances.values()
                if inst.backend is not None
            ),
            return_exceptions=True,
        )
        _log.info("stopped %d instances without finalizing (pid %d)", len(self.instances), os.getpid())
