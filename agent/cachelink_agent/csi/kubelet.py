"""The kubelet's side of the plugin, for whatever stands in for a kubelet (a local pod runner, tests).

A real kubelet needs none of this: it finds the plugin through ``plugins_registry`` and sends these
requests itself. ``volume_handle`` and ``publish_request`` build exactly what it sends for an inline
volume of a CSIDriver with ``podInfoOnMount`` (the volume handle of Kubernetes' ``makeVolumeHandle``);
``KubeletClient`` sends them over the plugin's Unix socket.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from cachelink_agent.csi import volumes
from cachelink_agent.csi._proto import csi_pb2, csi_pb2_grpc


@dataclass(frozen=True)
class PodRef:
    """The pod a volume is for, as the kubelet describes it to the driver."""

    namespace: str
    name: str
    uid: str
    service_account: str = "default"


def volume_handle(pod_uid: str, volume_name: str) -> str:
    """The id the kubelet gives an inline CSI volume: ``csi-`` + SHA-256 of pod uid and volume name."""
    return "csi-" + hashlib.sha256(f"{pod_uid}{volume_name}".encode()).hexdigest()


def target_path(kubelet_dir: Path, pod_uid: str, volume_name: str) -> Path:
    """Where the kubelet asks the driver to publish a pod's CSI volume."""
    return kubelet_dir / "pods" / pod_uid / "volumes" / "kubernetes.io~csi" / volume_name / "mount"


def volume_context(pod: PodRef, cachelink: str) -> dict[str, str]:
    """The volume attributes (``cachelink``) plus the pod information of ``podInfoOnMount``."""
    return {
        volumes.POD_NAME: pod.name,
        volumes.POD_NAMESPACE: pod.namespace,
        volumes.POD_UID: pod.uid,
        volumes.SERVICE_ACCOUNT: pod.service_account,
        volumes.EPHEMERAL: "true",
        volumes.CACHELINK: cachelink,
    }


def publish_request(
    pod: PodRef, cachelink: str, volume_name: str, kubelet_dir: Path
) -> csi_pb2.NodePublishVolumeRequest:
    """The NodePublishVolume request of a pod's inline volume (mount, read-only, single node)."""
    return csi_pb2.NodePublishVolumeRequest(
        volume_id=volume_handle(pod.uid, volume_name),
        target_path=str(target_path(kubelet_dir, pod.uid, volume_name)),
        volume_capability=csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(),
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
            ),
        ),
        readonly=True,
        volume_context=volume_context(pod, cachelink),
    )


class KubeletClient:
    """Publishes and unpublishes pods' volumes through the plugin's socket, as the kubelet does.

    The caller makes the target's parent folder first (the kubelet does); errors are ``grpc.RpcError``
    with the plugin's status code and message.
    """

    def __init__(self, socket: str | Path, kubelet_dir: Path, timeout: float = 120.0) -> None:
        self.kubelet_dir = kubelet_dir
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix://{socket}")
        self.node = csi_pb2_grpc.NodeStub(self._channel)

    def publish(self, pod: PodRef, cachelink: str, volume_name: str) -> Path:
        """Publish the pod's volume; returns the mounted target path."""
        request = publish_request(pod, cachelink, volume_name, self.kubelet_dir)
        Path(request.target_path).parent.mkdir(parents=True, exist_ok=True)
        self.node.NodePublishVolume(request, timeout=self.timeout)
        return Path(request.target_path)

    def unpublish(self, pod_uid: str, volume_name: str) -> None:
        """Unpublish the pod's volume (fine if it is not published)."""
        request = csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=volume_handle(pod_uid, volume_name),
            target_path=str(target_path(self.kubelet_dir, pod_uid, volume_name)),
        )
        self.node.NodeUnpublishVolume(request, timeout=self.timeout)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> KubeletClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
