"""The gRPC side of the CSI node plugin: Identity and Node on ``--csi-socket``, kubelet registration.

The kubelet's plugin watcher finds ``<kubelet-dir>/plugins_registry/<driver>-reg.sock`` and calls
``pluginregistration.Registration`` (GetInfo, then NotifyRegistrationStatus) on it; GetInfo names the CSI
socket, which the kubelet then calls for NodeGetInfo and every publish. Serving registration here means no
node-driver-registrar sidecar. Every refusal carries a gRPC status code and a message the kubelet shows in
the pod's events.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import wrappers_pb2

import cachelink_agent
from cachelink_agent.csi import volumes
from cachelink_agent.csi._proto import csi_pb2, csi_pb2_grpc, registration_pb2, registration_pb2_grpc
from cachelink_agent.csi.plugin import CsiPlugin, NotGranted, VolumeConflict
from llm_datadist.status import CacheLinkError

_log = logging.getLogger("cachelink_agent.csi")
#: the CSI versions the registration answer offers the kubelet
SUPPORTED_VERSIONS = ("1.0.0",)


class CsiStartError(CacheLinkError, OSError):
    """A plugin or registration socket cannot be served."""


class Identity(csi_pb2_grpc.IdentityServicer):
    """``csi.v1.Identity``: the driver's name and readiness."""

    def __init__(self, driver: str, ready: Callable[[], bool]) -> None:
        self.driver = driver
        self.ready = ready

    async def GetPluginInfo(  # noqa: N802 - gRPC method names
        self, request: csi_pb2.GetPluginInfoRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> csi_pb2.GetPluginInfoResponse:
        """The driver name (the CSIDriver object's) and the agent's version."""
        return csi_pb2.GetPluginInfoResponse(name=self.driver, vendor_version=cachelink_agent.__version__)

    async def GetPluginCapabilities(  # noqa: N802
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        """None: a node plugin only (no controller service, no topology)."""
        return csi_pb2.GetPluginCapabilitiesResponse()

    async def Probe(  # noqa: N802
        self, request: csi_pb2.ProbeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> csi_pb2.ProbeResponse:
        """Ready once the agent has restored its instances."""
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=self.ready()))


class Node(csi_pb2_grpc.NodeServicer):
    """``csi.v1.Node``: publish and unpublish ephemeral inline volumes (no staging, no stats)."""

    def __init__(self, plugin: CsiPlugin, kubelet_dir: Path) -> None:
        self.plugin = plugin
        self.kubelet_dir = kubelet_dir

    async def NodeGetInfo(  # noqa: N802
        self, request: csi_pb2.NodeGetInfoRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> csi_pb2.NodeGetInfoResponse:
        """The node's name: the kubelet records it as this node's id for the driver."""
        return csi_pb2.NodeGetInfoResponse(node_id=self.plugin.node_name)

    async def NodeGetCapabilities(  # noqa: N802
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        """None: publish and unpublish only."""
        return csi_pb2.NodeGetCapabilitiesResponse()

    async def NodePublishVolume(  # noqa: N802
        self, request: csi_pb2.NodePublishVolumeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> csi_pb2.NodePublishVolumeResponse:
        """Mount the pod's folder of granted sockets at the target path."""
        if not request.HasField("volume_capability") or request.volume_capability.HasField("block"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "volume_capability must be a mount volume (not block)"
            )
        try:
            volume = volumes.parse(
                request.volume_id, request.target_path, dict(request.volume_context), self.kubelet_dir
            )
            await self.plugin.publish(volume)
        except volumes.InvalidVolume as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except NotGranted as error:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        except VolumeConflict as error:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(error))
        except OSError as error:
            await context.abort(grpc.StatusCode.INTERNAL, f"publishing {request.volume_id} failed: {error}")
        return csi_pb2.NodePublishVolumeResponse()

    async def NodeUnpublishVolume(  # noqa: N802
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        """Revoke the volume's sockets, unmount and remove its folder (an unknown volume is fine)."""
        try:
            await self.plugin.unpublish(request.volume_id, request.target_path)
        except volumes.InvalidVolume as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except VolumeConflict as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except OSError as error:
            await context.abort(grpc.StatusCode.INTERNAL, f"unpublishing {request.volume_id} failed: {error}")
        return csi_pb2.NodeUnpublishVolumeResponse()


class Registration(registration_pb2_grpc.RegistrationServicer):
    """``pluginregistration.Registration``: what the kubelet's plugin watcher asks."""

    def __init__(self, driver: str, endpoint: str) -> None:
        self.driver = driver
        self.endpoint = endpoint
        self.registered: bool | None = None

    async def GetInfo(  # noqa: N802
        self, request: registration_pb2.InfoRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> registration_pb2.PluginInfo:
        """A CSI plugin of this driver name, served at the CSI socket."""
        return registration_pb2.PluginInfo(
            type="CSIPlugin", name=self.driver, endpoint=self.endpoint, supported_versions=SUPPORTED_VERSIONS
        )

    async def NotifyRegistrationStatus(  # noqa: N802
        self, request: registration_pb2.RegistrationStatus, context: grpc.aio.ServicerContext[object, object]
    ) -> registration_pb2.RegistrationStatusResponse:
        """The kubelet's verdict, logged."""
        self.registered = request.plugin_registered
        if request.plugin_registered:
            _log.info("CSI driver %s registered with the kubelet", self.driver)
        else:
            _log.error("the kubelet refused CSI driver %s: %s", self.driver, request.error)
        return registration_pb2.RegistrationStatusResponse()


def _serve_unix(path: Path) -> grpc.aio.Server:
    if len(str(path)) > 107:
        raise CsiStartError(f"socket path {path} is longer than a Unix socket address allows (107)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    except OSError as error:
        raise CsiStartError(f"cannot listen on {path}: {error}") from None
    server = grpc.aio.server()
    try:
        server.add_insecure_port(f"unix://{path}")  # root-only: the socket is 0600 below
    except RuntimeError as error:
        raise CsiStartError(f"cannot listen on {path}: {error}") from None
    return server


class CsiServer:
    """The two gRPC servers: the plugin on ``--csi-socket``, registration in ``plugins_registry``."""

    def __init__(
        self,
        plugin: CsiPlugin,
        ready: Callable[[], bool],
        socket: Path,
        kubelet_dir: Path,
        driver: str,
        register: bool,
    ) -> None:
        self.socket = socket
        self.registration_socket = kubelet_dir / "plugins_registry" / f"{driver}-reg.sock"
        self._identity = Identity(driver, ready)
        self._node = Node(plugin, kubelet_dir)
        self._registration = Registration(driver, str(socket)) if register else None
        self._servers: list[tuple[grpc.aio.Server, Path]] = []

    async def start(self) -> None:
        """Listen on the plugin socket, then (when registering) on the registration socket."""
        server = _serve_unix(self.socket)
        csi_pb2_grpc.add_IdentityServicer_to_server(self._identity, server)
        csi_pb2_grpc.add_NodeServicer_to_server(self._node, server)
        await self._start(server, self.socket)
        if self._registration is not None:
            registrar = _serve_unix(self.registration_socket)
            registration_pb2_grpc.add_RegistrationServicer_to_server(self._registration, registrar)
            await self._start(registrar, self.registration_socket)
        _log.info(
            "CSI node plugin on %s%s",
            self.socket,
            f", registration on {self.registration_socket}" if self._registration else "",
        )

    async def _start(self, server: grpc.aio.Server, path: Path) -> None:
        await server.start()
        path.chmod(0o600)
        self._servers.append((server, path))

    async def stop(self, grace: float) -> None:
        """Stop both servers (registration first, so the kubelet stops calling) and remove the sockets."""
        for server, path in reversed(self._servers):
            await server.stop(grace)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._servers.clear()
