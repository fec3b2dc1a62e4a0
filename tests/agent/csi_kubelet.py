"""What a kubelet does to a CSI node plugin, over real gRPC on its Unix sockets, and a node's folders for it."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from cachelink_agent.csi import kubelet, mounts
from cachelink_agent.csi._proto import csi_pb2, csi_pb2_grpc, registration_pb2_grpc

from .conftest import PROMPT_IP, Agent

DRIVER = "cachelink.io"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str = ""
    service_account: str = "default"

    @staticmethod
    def make(namespace: str, name: str) -> Pod:
        return Pod(namespace, name, str(uuid.uuid4()))

    @property
    def ref(self) -> kubelet.PodRef:
        return kubelet.PodRef(self.namespace, self.name, self.uid, self.service_account)


class Kubelet:
    """Calls the agent's CSI plugin as the kubelet would (paths laid out as under /var/lib/kubelet)."""

    def __init__(self, root: Path, csi_socket: Path) -> None:
        self.root = root
        self.csi_socket = csi_socket
        self._channel = grpc.insecure_channel(f"unix://{csi_socket}")
        self.identity = csi_pb2_grpc.IdentityStub(self._channel)
        self.node = csi_pb2_grpc.NodeStub(self._channel)

    def registration(self) -> registration_pb2_grpc.RegistrationStub:
        channel = grpc.insecure_channel(f"unix://{self.root / 'plugins_registry' / f'{DRIVER}-reg.sock'}")
        return registration_pb2_grpc.RegistrationStub(channel)

    @staticmethod
    def volume_id(pod: Pod, volume: str = "kv") -> str:
        return kubelet.volume_handle(pod.uid, volume)

    def target(self, pod: Pod, volume: str = "kv") -> Path:
        """The target path the kubelet passes (its parent made by the kubelet; the target left to the plugin)."""
        parent = kubelet.target_path(self.root, pod.uid, volume).parent
        parent.mkdir(parents=True, exist_ok=True)
        folder = parent
        while folder != self.root:  # reachable by a non-root workload, as its mount would be in a container
            folder.chmod(0o755)
            folder = folder.parent
        return parent / "mount"

    def context(self, pod: Pod, cachelink: str) -> dict[str, str]:
        return kubelet.volume_context(pod.ref, cachelink)

    def publish(
        self, pod: Pod, cachelink: str, volume: str = "kv", timeout: float = 30, **override: object
    ) -> Path:
        target = self.target(pod, volume)
        request = kubelet.publish_request(pod.ref, cachelink, volume, self.root)
        for field, value in override.items():
            if field == "volume_context":
                request.ClearField("volume_context")
                request.volume_context.update(value)  # type: ignore[arg-type]
            elif field == "volume_capability":
                request.volume_capability.CopyFrom(value)  # type: ignore[arg-type]
            else:
                setattr(request, field, value)
        self.node.NodePublishVolume(request, timeout=timeout)
        return target

    def unpublish(self, pod: Pod, volume: str = "kv") -> None:
        request = csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=self.volume_id(pod, volume), target_path=str(self.target(pod, volume))
        )
        self.node.NodeUnpublishVolume(request, timeout=30)

    def close(self) -> None:
        self._channel.close()


@dataclass
class CsiNode:
    """An agent serving the CSI plugin, and the kubelet folder it publishes into."""

    agent: Agent
    kubelet: Kubelet
    root: Path

    def sockets(self, target: Path) -> list[str]:
        return sorted(p.name for p in target.iterdir())


def mounts_under(root: Path) -> list[str]:
    return sorted(p for p in mounts.mount_points() if p.startswith(f"{root}/"))


@contextlib.contextmanager
def csi_node(node: str = "csi-node", *extra: str, mode: str = "in-process") -> Iterator[CsiNode]:
    """A real agent with ``--csi-socket`` and ``--kubelet-dir`` in a short folder (socket paths stay short).

    On the way out: the agent is killed, every mount under the folder is taken off, and the test fails if
    any was left (a test that unpublished everything leaves none).
    """
    root = Path(tempfile.mkdtemp(prefix="clcsi-", dir="/tmp"))
    root.chmod(0o755)
    kubelet_dir = root / "kubelet"
    (kubelet_dir / "pods").mkdir(parents=True)
    kubelet_dir.chmod(0o755)
    (kubelet_dir / "pods").chmod(0o755)
    csi_socket = root / "csi.sock"
    agent = Agent(
        root,
        node,
        PROMPT_IP,
        [
            *(["--in-process"] if mode == "in-process" else []),
            "--csi-socket",
            str(csi_socket),
            "--kubelet-dir",
            str(kubelet_dir),
            "--csi-grant-wait",
            "2",
            "--lease-seconds",
            "2",
            *extra,
        ],
    )
    kubelet = Kubelet(kubelet_dir, csi_socket)
    try:
        agent.start()
        yield CsiNode(agent, kubelet, root)
    finally:
        kubelet.close()
        agent.cleanup()
        left = mounts_under(root)
        for path in reversed(left):
            with contextlib.suppress(OSError):
                mounts.unmount(path)
        shutil.rmtree(root, ignore_errors=True)
        assert not mounts_under(root), f"mounts left under {root}"
        assert not left, f"the test left mounts behind: {left}"
