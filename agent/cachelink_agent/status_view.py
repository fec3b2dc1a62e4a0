"""An instance's status as the API reports it, rendered from its record, attempts and last engine status."""

from __future__ import annotations

from cachelink_agent import models
from cachelink_agent.records import Instance


def link_status(instance: Instance, remote_id: int) -> models.LinkStatus:
    engine = next(
        (
            link
            for link in instance.last_status.get("links", [])
            if link["remote_cluster_id"] == remote_id and not link["comm_id"]
        ),
        None,
    )
    desired = instance.record.links.get(str(remote_id))
    attempt = instance.attempts.get(remote_id)
    link_state: models.LinkState
    if engine is not None:
        link_state = "linked" if engine["state"] == "linked" else "broken"
    else:
        link_state = "broken" if desired is not None else "failed"
    address = (
        engine["address"]
        if engine
        else (desired.remote_address if desired else attempt.address if attempt else "")
    )
    return models.LinkStatus(
        remote_cluster_id=remote_id,
        address=address,
        state=link_state,
        data_path=engine["data_path"] if engine and engine["data_path"] in ("tcp", "shm") else "",
        last_status=attempt.status if attempt else "",
        last_error=(
            engine["last_error"] if engine and engine["last_error"] else attempt.error if attempt else ""
        ),
        peer_incarnation=engine["peer_incarnation"] if engine else 0,
    )


def comm_status(instance: Instance, comm_name: str) -> models.CommLinkStatus:
    live = instance.last_status.get("comm_links", {}).get(comm_name)
    attempt = instance.comm_attempts.get(comm_name)
    comm_state: models.CommState = "pending"
    if live and live["state"] in ("OK", "PREPARING", "FAILED"):
        comm_state = live["state"]
    elif attempt and attempt.status != "LLM_SUCCESS":
        comm_state = "FAILED"
    return models.CommLinkStatus(
        comm_name=comm_name,
        comm_id=live["comm_id"] if live else 0,
        state=comm_state,
        last_status=attempt.status if attempt else "",
        last_error=attempt.error if attempt else "",
    )


def instance_status(instance: Instance, mode: models.Mode, attach_socket: str) -> models.InstanceStatus:
    live = instance.last_status if instance.state == "running" else {}
    remote_ids = (
        {int(r) for r in instance.record.links}
        | set(instance.attempts)
        | {link["remote_cluster_id"] for link in live.get("links", []) if not link["comm_id"]}
    )
    comm_names = (
        set(instance.record.comm_links) | set(instance.comm_attempts) | set(live.get("comm_links", {}))
    )
    pools = [models.PoolStatus(**pool) for pool in live.get("pools", [])]
    return models.InstanceStatus(
        name=instance.name,
        role=instance.spec.role,
        cluster_id=instance.spec.cluster_id,
        owner=instance.spec.owner,
        mode=mode,
        state="finalizing" if instance.stopping else instance.state,
        incarnation=instance.incarnation,
        listen_address=instance.listen_address,
        pid=instance.pid,
        restarts=instance.restarts,
        links=[link_status(instance, r) for r in sorted(remote_ids)],
        comm_links=[comm_status(instance, c) for c in sorted(comm_names)],
        pools=pools,
        pool_bytes=instance.pool_bytes,
        caches=int(live.get("caches", 0)),
        attach_socket=attach_socket,
        attach_sessions=int(live.get("attach_sessions", 0)),
        counters=dict(live.get("counters", {})),
        owner_confirmed_at=instance.record.owner_confirmed_at,
        quarantined=bool(instance.quarantine),
        last_error=instance.last_error,
        options=models.redact_options(dict(instance.spec.options)),
        options_sha256=models.options_digest(dict(instance.spec.options)),
    )
