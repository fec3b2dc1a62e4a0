"""Auth (tokens, attach credentials) and the two leases: attach sessions and owner confirmation."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from cachelink_agent import models, protocol, tokens
from cachelink_agent.attach import AttachError, attach
from cachelink_agent.client import AgentConflict, AgentForbidden, AgentUnauthorized

from .conftest import METRICS_TOKEN, PROMPT_IP, SIGNING_KEY, wait_for


def test_tokens(agents) -> None:
    agent = agents("node-a", PROMPT_IP, "--in-process")
    assert agent.http("GET", "/healthz", token=None) == (200, {"status": "ok"})
    assert agent.http("GET", "/readyz", token=None)[0] == 200
    for path in ("/v1/instances", "/v1/node", "/metrics", "/openapi.json"):
        status, body = agent.http("GET", path, token=None)
        assert status == 401 and body["error"] == "unauthorized", path
    refused = {
        "garbage": "node-a:" + "0" * 64,
        "another key": tokens.mint(tokens.generate_signing_key(), "node-a"),
        "expired": tokens.mint(SIGNING_KEY, "node-a", lifetime_s=60, now=time.time() - 3600),
        "too long a life": tokens.mint(SIGNING_KEY, "node-a", lifetime_s=tokens.MAX_LIFETIME_S + 1),
        "issued in the future": tokens.mint(SIGNING_KEY, "node-a", now=time.time() + 3600),
        "oversized": "x" * (tokens.MAX_TOKEN_BYTES + 1),
    }
    for why, token in refused.items():
        status, body = agent.http("GET", "/v1/instances", token=token)
        assert status == 401 and body["error"] == "unauthorized", (why, body)
    assert "expired" in agent.http("GET", "/v1/node", token=refused["expired"])[1]["message"]
    # a valid token of another node (replayed from there): 403, and it names that node
    other = tokens.mint(SIGNING_KEY, "node-b")
    status, body = agent.http("GET", "/v1/instances", token=other)
    assert status == 403 and body["error"] == "forbidden" and "node-b" in body["message"]
    with pytest.raises(AgentForbidden) as raised:
        agent.call(lambda c: c.get_instances(), token=other)
    assert raised.value.status == 403 and raised.value.body is not None
    with pytest.raises(AgentUnauthorized):
        agent.call(lambda c: c.get_instances(), token="garbage")
    assert agent.http("GET", "/v1/instances")[0] == 200


def test_the_metrics_credential_reads_metrics_and_nothing_else(agents) -> None:
    agent = agents("node-a", PROMPT_IP, "--in-process")
    metrics = METRICS_TOKEN.decode()
    status, body = agent.http("GET", "/metrics", token=metrics)
    assert status == 200 and "cachelink_agent" in body
    for method, path in (("GET", "/v1/instances"), ("GET", "/v1/node"), ("DELETE", "/v1/instances/x")):
        status, body = agent.http(method, path, token=metrics)
        assert status == 403 and "metrics credential" in body["message"], (method, path)
    # a scope other than the API's, even when signed by the operator's key, opens nothing
    status, body = agent.http("GET", "/v1/node", token=tokens.mint(SIGNING_KEY, "node-a", scope="metrics"))
    assert status == 403 and "scope" in body["message"]


def test_a_rotated_verify_key_is_picked_up_without_a_restart(agents) -> None:
    agent = agents("node-a", PROMPT_IP, "--in-process")
    new_key = tokens.generate_signing_key()
    staged = agent.verify_key_file.with_suffix(".new")
    staged.write_bytes(tokens.public_pem(new_key))
    staged.replace(agent.verify_key_file)  # as a ConfigMap volume swaps its files
    wait_for(
        lambda: agent.http("GET", "/v1/node", token=tokens.mint(new_key, "node-a"))[0] == 200,
        20,
        "the new key accepted",
    )
    assert agent.http("GET", "/v1/node", token=tokens.mint(SIGNING_KEY, "node-a"))[0] == 401
    agent.verify_key_file.write_bytes(tokens.public_pem(SIGNING_KEY))


def test_attach_refused_for_peer_not_allowed(agents) -> None:
    agent = agents("node-a", PROMPT_IP, "--in-process")
    agent.put_instance("locked", 1, attach=models.AttachPolicy(uids=[os.getuid() + 4242]))
    socket_file = agent.run_dir / "locked.sock"
    assert socket_file.stat().st_mode & 0o777 == 0o600
    with pytest.raises(PermissionError, match="may not attach"):
        attach(agent.run_dir, "locked")
    with pytest.raises(AttachError):
        attach(agent.run_dir, "absent")
    with pytest.raises(ValueError, match="DNS-1123"):
        attach(agent.run_dir, "../etc")


POD_UID = "3f0c1d2e-4b5a-4c6d-8e7f-901a2b3c4d5e"


@pytest.mark.slow
def test_pod_policy_and_a_peer_in_another_pid_namespace(agents) -> None:
    """At the host socket a pod is checked by the peer's cgroup; a peer the agent cannot see (pid 0, another
    PID namespace) is refused: pods attach through their CSI volume (tests/agent/test_csi.py)."""
    policy = models.AttachPolicy(pod_uids=[POD_UID])
    same = agents("node-same", PROMPT_IP, "--in-process")
    same.put_instance("pod-only", 1, attach=policy)
    with socket.socket(socket.AF_UNIX) as conn:  # raw: the refusal is read before anything is sent
        conn.settimeout(10)
        conn.connect(str(same.run_dir / "pod-only.sock"))
        refusal = protocol.recv(conn)  # this test's process is visible, and not in that pod
    assert not refusal["ok"] and refusal["error"]["kind"] == "PermissionError"

    other = agents("node-pidns", PROMPT_IP, pid1=True)  # as in a container: its own PID namespace
    other.put_instance("pod-only", 2, attach=policy)
    with pytest.raises(PermissionError, match=r"pid 0.*CSI volume"):
        attach(other.run_dir, "pod-only")


WORKLOAD = """
import sys, time
from llm_datadist import CacheDesc, DataType
from cachelink_agent.attach import attach
manager = attach(sys.argv[1], "leased", lease_seconds=1)
cache = manager.allocate_blocks_cache(CacheDesc(2, [4, 4096], DataType.DT_FLOAT16))
cache.numpy(0)[:] = 1
print("allocated", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_caches_of_a_killed_workload_are_freed_after_its_lease(agents) -> None:
    agent = agents("node-a", PROMPT_IP)
    agent.put_instance("leased", 1)
    workload = subprocess.Popen(
        [sys.executable, "-P", "-c", WORKLOAD, str(agent.run_dir)], stdout=subprocess.PIPE
    )
    try:
        assert workload.stdout is not None and workload.stdout.readline().strip() == b"allocated"
        status = agent.instance("leased")
        assert status.caches == 1 and status.pools[0].used > 0 and status.attach_sessions == 1
        workload.send_signal(signal.SIGKILL)
        workload.wait()
        killed_at = time.monotonic()
        freed = wait_for(
            lambda: (s := agent.instance("leased")).caches == 0 and s, 10, "the lease to run out"
        )
        assert freed.pools[0].used == 0 and freed.attach_sessions == 0
        assert time.monotonic() - killed_at >= 0.5  # freed by the lease, not at once
    finally:
        if workload.poll() is None:
            workload.kill()
            workload.wait()
        if workload.stdout is not None:
            workload.stdout.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["in-process", "worker"])
def test_instance_of_a_silent_owner_is_quarantined_then_finalized(agents, mode) -> None:
    flags = ["--owner-ttl", "3", "--owner-finalize-ttl", "15", "--reconcile-interval", "0.2"]
    agent = agents("node-a", PROMPT_IP, *(["--in-process"] if mode == "in-process" else []), *flags)
    agent.put_instance("orphan", 1, owner="gone-uid")
    agent.put_instance("kept", 2, owner="live-uid")
    agent.put_instance("revived", 3, owner="late-uid")
    stop = threading.Event()
    live_owners = ["live-uid"]

    def confirm_live_owners() -> None:  # the operator's caretaker, for the owners that are alive
        while not stop.wait(0.3):
            agent.call(lambda c: c.confirm_owner(*live_owners))

    confirmer = threading.Thread(target=confirm_live_owners, daemon=True)
    confirmer.start()
    try:
        status = {
            name: lambda n=name: agent.call(lambda c: c.get_instance(n)) for name in ("orphan", "revived")
        }
        wait_for(lambda: all(s().quarantined for s in status.values()), 30, "both silent owners quarantined")
        assert not agent.call(lambda c: c.get_instance("kept")).quarantined
        # quarantined: no new links, no new attach sessions; the instance and its pool are still there
        link = models.LinkSpec(remote_address="127.0.0.1:1")
        with pytest.raises(AgentConflict, match="quarantined"):
            agent.call(lambda c: c.put_link("orphan", 9, link))
        with pytest.raises(PermissionError, match="refused"):
            attach(agent.run_dir, "orphan")
        assert "cachelink_agent_owner_quarantined_total 2.0" in agent.call(lambda c: c.metrics())
        # its owner is back: admitted again
        live_owners.append("late-uid")
        assert agent.call(lambda c: c.confirm_owner("late-uid")).confirmed == ["revived"]
        assert not agent.call(lambda c: c.get_instance("revived")).quarantined
        with attach(agent.run_dir, "revived") as manager:
            assert manager is not None
        # still silent after --owner-finalize-ttl: finalized, its pool freed
        wait_for(
            lambda: "orphan" not in {i.name for i in agent.call(lambda c: c.get_instances())},
            40,
            "the orphan finalized",
        )
    finally:
        stop.set()
        confirmer.join(timeout=30)
    assert {i.name for i in agent.call(lambda c: c.get_instances())} == {"kept", "revived"}
    names = sorted(p.name for p in agent.pool_dir.iterdir())
    assert not any("orphan" in n for n in names) and any("kept" in n for n in names)
    assert "cachelink_agent_owner_expired_total 1.0" in agent.call(lambda c: c.metrics())


def test_a_lease_that_is_not_a_finite_number_is_refused(agents) -> None:
    agent = agents("node-a", PROMPT_IP, "--in-process")
    agent.put_instance("leased", 1)
    for lease in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            attach(agent.run_dir, "leased", lease_seconds=lease)
    with attach(agent.run_dir, "leased", lease_seconds=5) as manager:
        assert manager.lease_seconds == 5
