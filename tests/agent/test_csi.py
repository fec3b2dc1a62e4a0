"""The agent's CSI node plugin, called over real gRPC as a kubelet calls it, with real bind mounts (root).

Each test starts a real agent with ``--csi-socket`` and ``--kubelet-dir`` in a folder of its own, and checks
what a pod would see: the folder mounted at its target path, the sockets in it, an attach through them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from cachelink_agent import models
from cachelink_agent.attach import AttachError, attach
from cachelink_agent.csi import kubelet, mounts
from cachelink_agent.csi._proto import csi_pb2, registration_pb2

from llm_datadist import CacheDesc, DataType

from .conftest import wait_for
from .csi_kubelet import DRIVER, CsiNode, Pod, csi_node

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")

DESC = CacheDesc(2, [4, 4096], DataType.DT_FLOAT16)
TEAM_A, TEAM_B = "team-a", "team-b"


def grant(node: CsiNode, name: str, cluster_id: int, namespace: str, cachelink: str, *pods: Pod, **kw):
    """An instance whose attach policy grants ``pods`` of CacheLink ``namespace/cachelink`` (as the operator puts it)."""
    policy = models.AttachPolicy(
        pod_uids=[p.uid for p in pods], namespace=namespace, cachelink=cachelink, **kw
    )
    return node.agent.put_instance(name, cluster_id, attach=policy)


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value.code(), failure.value.details()


@pytest.fixture
def node(request):
    """An agent serving the plugin: instances in-process, or (``indirect`` "worker") in worker processes."""
    with csi_node(mode=getattr(request, "param", "in-process")) as made:
        yield made


def test_registration_and_identity_answer_as_the_kubelet_expects(node):
    info = node.kubelet.registration().GetInfo(registration_pb2.InfoRequest(), timeout=10)
    assert (info.type, info.name, info.endpoint) == ("CSIPlugin", DRIVER, str(node.kubelet.csi_socket))
    assert "1.0.0" in info.supported_versions
    node.kubelet.registration().NotifyRegistrationStatus(
        registration_pb2.RegistrationStatus(plugin_registered=True), timeout=10
    )
    plugin = node.kubelet.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
    assert plugin.name == DRIVER and plugin.vendor_version
    assert node.kubelet.identity.Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value is True
    assert node.kubelet.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10).node_id == "csi-node"
    caps = node.kubelet.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=10)
    assert list(caps.capabilities) == [], "no staging: the kubelet calls publish directly"
    assert oct(node.kubelet.csi_socket.stat().st_mode & 0o777) == "0o600"


def test_the_pod_gets_exactly_its_granted_sockets_read_only(node):
    pod, neighbour = Pod.make(TEAM_A, "decode-0"), Pod.make(TEAM_A, "decode-1")
    grant(node, "mine", 1, TEAM_A, "kv", pod)
    grant(node, "neighbours", 2, TEAM_A, "kv", neighbour)
    grant(
        node, "other-link", 3, TEAM_A, "other", pod
    )  # the pod's, but of a CacheLink its volume does not name
    target = node.kubelet.publish(pod, "kv")
    try:
        assert mounts.is_mount_point(target)
        assert node.sockets(target) == ["mine.sock"]
        with pytest.raises(OSError) as denied:
            (target / "planted").write_text("x")
        assert denied.value.errno == errno.EROFS
    finally:
        node.kubelet.unpublish(pod)
    assert not target.exists() and not list((node.agent.run_dir / "csi").iterdir())


def test_a_pod_of_another_namespace_naming_the_cachelink_is_refused_and_nothing_is_mounted(node):
    owner, intruder = Pod.make(TEAM_A, "decode-0"), Pod.make(TEAM_B, "decode-0")
    grant(node, "team-a-kv", 1, TEAM_A, "kv", owner)
    code, message = code_of(lambda: node.kubelet.publish(intruder, "kv"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "team-b/kv" in message and "own namespace" in message
    assert not node.kubelet.target(intruder).exists()
    assert not list((node.agent.run_dir / "csi").iterdir())
    # even listing the owner pod's uid does not help: the grant names team-a
    impostor = Pod(TEAM_B, "decode-0", owner.uid)
    code, _ = code_of(lambda: node.kubelet.publish(impostor, "kv"))
    assert code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"volume_context": {"cachelink": "kv"}}, "ephemeral"),
        (
            {"volume_context": {"csi.storage.k8s.io/ephemeral": "true", "cachelink": "kv"}},
            "podInfoOnMount",
        ),
        ({"volume_id": "../../etc"}, "volume_id"),
        ({"target_path": "/etc/cachelink"}, "not inside the pod's folder"),
        (
            {"volume_capability": csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume())},
            "mount volume",
        ),
    ],
)
def test_malformed_publishes_get_invalid_argument(node, override, words):
    pod = Pod.make(TEAM_A, "decode-0")
    code, message = code_of(lambda: node.kubelet.publish(pod, "kv", **override))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and words in message
    assert not mounts.is_mount_point(node.kubelet.target(pod))


def test_missing_cachelink_attribute_and_bad_pod_fields_are_named(node):
    pod = Pod.make(TEAM_A, "decode-0")
    context = node.kubelet.context(pod, "kv")
    del context["cachelink"]
    code, message = code_of(lambda: node.kubelet.publish(pod, "kv", volume_context=context))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'cachelink'" in message
    context = node.kubelet.context(pod, "Not_A_Name")
    code, message = code_of(lambda: node.kubelet.publish(pod, "kv", volume_context=context))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "cachelink" in message


@pytest.mark.parametrize("node", ["in-process", "worker"], indirect=True)
def test_attach_through_the_pod_socket_maps_the_pool_from_a_descriptor(node):
    pod = Pod.make(TEAM_A, "decode-0")
    grant(node, "mine", 1, TEAM_A, "kv", pod)
    target = node.kubelet.publish(pod, "kv")
    try:
        with attach(target, "mine") as manager:
            cache = manager.allocate_blocks_cache(DESC)
            view = cache.numpy(0)
            view[0] = 7  # written through the client's map of the pool
            # the engine (in the agent) copies block 0 to block 2: it reads what the view wrote
            manager.copy_blocks(cache, {0: [2]})
            assert (view[2] == 7).all() and (view[1] == 0).all()
            assert node.agent.instance("mine").attach_sessions == 1
    finally:
        node.kubelet.unpublish(pod)


NON_ROOT = """
import json, os, sys
from cachelink_agent import attach as client, models  # everything imported before giving up root
from llm_datadist import CacheDesc, DataType
import numpy
target, pools = sys.argv[1], json.loads(sys.argv[2])
os.setgroups([]); os.setgid(65534); os.setuid(65534)
result = {"uid": os.getuid(), "pool_errors": []}
for path in pools:
    try:
        os.open(path, os.O_RDONLY)
        result["pool_errors"].append("opened")
    except OSError as error:
        result["pool_errors"].append(error.errno)
with client.attach(target, "mine") as manager:
    cache = manager.allocate_blocks_cache(CacheDesc(2, [4, 4096], DataType.DT_FLOAT16))
    cache.numpy(0)[3] = 5
    manager.copy_blocks(cache, {3: [1]})
    result["copied"] = bool((cache.numpy(0)[1] == 5).all())
print(json.dumps(result))
"""


def test_a_non_root_workload_attaches_by_fd_but_cannot_open_the_pool_files(node):
    pod = Pod.make(TEAM_A, "decode-0")
    grant(node, "mine", 1, TEAM_A, "kv", pod)
    pools = [p.path for p in node.agent.instance("mine").pools]
    assert pools and oct(Path(pools[0]).parent.stat().st_mode & 0o777) == "0o700"
    target = node.kubelet.publish(pod, "kv")
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-c", NON_ROOT, str(target), json.dumps(pools)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["uid"] == 65534
        assert result["pool_errors"] == [errno.EACCES] * len(pools), "the pool folder is 0700"
        assert result["copied"], "the workload's view and the engine share the pool"
    finally:
        node.kubelet.unpublish(pod)


def test_a_grant_after_the_mount_adds_the_socket_and_a_publish_waits_for_its_grant(node):
    pod = Pod.make(TEAM_A, "decode-0")
    grant(node, "first", 1, TEAM_A, "kv", pod)
    target = node.kubelet.publish(pod, "kv")
    late = Pod.make(TEAM_A, "decode-1")
    published: list[object] = []
    waiting = threading.Thread(target=lambda: published.append(node.kubelet.publish(late, "kv")))
    try:
        waiting.start()  # no grant yet: the publish waits (--csi-grant-wait 2)
        grant(node, "second", 2, TEAM_A, "kv", pod)
        wait_for(
            lambda: node.sockets(target) == ["first.sock", "second.sock"], 10, "the later grant's socket"
        )
        with attach(target, "second") as manager:
            assert manager.instance == "second"
        grant(node, "late", 3, TEAM_A, "kv", late)
        waiting.join(30)
        assert published, "the waiting publish succeeded once its grant came"
        assert node.sockets(node.kubelet.target(late)) == ["late.sock"]
    finally:
        waiting.join(30)
        node.kubelet.unpublish(pod)
        node.kubelet.unpublish(late)


def test_revocation_removes_the_socket_closes_sessions_and_frees_their_caches(node):
    pod = Pod.make(TEAM_A, "decode-0")
    grant(node, "mine", 1, TEAM_A, "kv", pod)
    grant(node, "other", 2, TEAM_A, "kv", pod)
    target = node.kubelet.publish(pod, "kv")
    try:
        manager = attach(target, "mine")
        manager.allocate_blocks_cache(DESC)
        assert node.agent.instance("mine").caches == 1
        # instance deleted: its socket leaves the folder, which stays mounted with the other one
        node.agent.call(lambda c: c.delete_instance("other"))
        wait_for(lambda: node.sockets(target) == ["mine.sock"], 10, "the deleted instance's socket to go")
    finally:
        node.kubelet.unpublish(pod)  # every grant of the volume revoked
    status = node.agent.instance("mine")
    assert status.attach_sessions == 0 and status.caches == 0, "the session ended and its cache was freed"
    with pytest.raises(AttachError):
        manager.allocate_blocks_cache(DESC)
    manager.detach()


def test_publish_and_unpublish_are_idempotent(node):
    pod = Pod.make(TEAM_A, "decode-0")
    grant(node, "mine", 1, TEAM_A, "kv", pod)
    target = node.kubelet.publish(pod, "kv")
    assert node.kubelet.publish(pod, "kv") == target
    assert [m for m in mounts.mount_points() if m == str(target)] == [str(target)], "mounted once"
    code, _ = code_of(lambda: node.kubelet.publish(pod, "other-name"))
    assert code == grpc.StatusCode.ALREADY_EXISTS, "the same volume id for another CacheLink"
    node.kubelet.unpublish(pod)
    node.kubelet.unpublish(pod)
    assert not target.exists()
    node.kubelet.unpublish(Pod.make(TEAM_A, "never-published"))


@pytest.mark.parametrize("node", ["in-process", "worker"], indirect=True)
def test_a_restarted_agent_keeps_the_volume_and_serves_its_socket_again(node):
    pod = Pod.make(TEAM_A, "decode-0")
    grant(node, "mine", 1, TEAM_A, "kv", pod)
    target = node.kubelet.publish(pod, "kv")
    try:
        with attach(target, "mine") as manager:
            manager.allocate_blocks_cache(DESC).numpy(0)[0] = 9
        node.agent.kill(signal.SIGKILL)
        assert mounts.is_mount_point(target), "the mount outlives the agent"
        node.agent.start()
        wait_for(lambda: node.sockets(target) == ["mine.sock"], 20, "the socket to be served again")

        def attached() -> bool:
            try:
                with attach(target, "mine", timeout=5):
                    return True
            except AttachError:
                return False

        wait_for(attached, 20, "an attach through the restored volume")
    finally:
        node.kubelet.unpublish(pod)
    assert not mounts.is_mount_point(target)


def test_a_volume_whose_pod_went_away_while_the_agent_was_down_is_dropped(node):
    pod, kept = Pod.make(TEAM_A, "decode-0"), Pod.make(TEAM_A, "decode-1")
    grant(node, "mine", 1, TEAM_A, "kv", pod, kept)
    target = node.kubelet.publish(pod, "kv")
    kept_target = node.kubelet.publish(kept, "kv")
    volumes_file = node.agent.state_dir / "csi-volumes.json"
    assert len(json.loads(volumes_file.read_text())["volumes"]) == 2
    node.agent.kill(signal.SIGKILL)
    mounts.unmount(target)  # what the kubelet does to a deleted pod: no unpublish reached the agent
    shutil.rmtree(node.kubelet.root / "pods" / pod.uid)
    node.agent.start()
    volumes = json.loads(volumes_file.read_text())["volumes"]
    assert list(volumes) == [node.kubelet.volume_id(kept)], "the gone pod's volume is forgotten"
    assert len(list((node.agent.run_dir / "csi").iterdir())) == 1, "and its folder removed"
    wait_for(lambda: node.sockets(kept_target) == ["mine.sock"], 20, "the kept volume's socket")
    node.kubelet.unpublish(kept)


def test_the_kubelet_client_publishes_what_a_kubelet_would(node):
    """``cachelink_agent.csi.kubelet``: for a local pod runner standing in for the kubelet."""
    pod = Pod.make(TEAM_A, "decode-0")
    grant(node, "mine", 1, TEAM_A, "kv", pod)
    with kubelet.KubeletClient(node.kubelet.csi_socket, node.kubelet.root, timeout=30) as client:
        target = client.publish(pod.ref, "kv", "cachelink")
        assert (
            target
            == node.kubelet.root / "pods" / pod.uid / "volumes" / "kubernetes.io~csi" / "cachelink" / "mount"
        )
        assert node.sockets(target) == ["mine.sock"]
        with attach(target, "mine") as manager:
            assert manager.instance == "mine"
        client.unpublish(pod.uid, "cachelink")
    assert not target.exists()
