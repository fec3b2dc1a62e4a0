"""The CSI node plugin's decisions: which pod may publish a volume, and what its folder holds.

- **Publish** needs a grant: an instance on this node whose attach policy names the pod's namespace, the
  CacheLink the volume names and the pod's uid. The publish waits up to ``--csi-grant-wait`` seconds for
  one (the operator usually places the pod's instance moments after the pod is scheduled); without one it
  is refused (``NotGranted``), nothing is mounted and the kubelet retries with its back-off.
- **After the mount** the folder follows the grants: an instance that starts granting the pod later adds
  its socket; a revoked grant (the instance deleted, or replaced without the pod) removes it, closes the
  connections made through it and ends their sessions, freeing their caches.
- **Unpublish** removes every socket of the volume (same effect as a revocation), unmounts and removes
  the folder. Publish and unpublish are idempotent.
- **Restart**: volumes are persisted before they are mounted and forgotten after they are unmounted, so a
  restarted agent serves every published volume again as its instances come back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cachelink_agent import models
from cachelink_agent.csi.folders import Folders
from cachelink_agent.csi.volumes import InvalidVolume, Volume, VolumeStore, check_volume_id
from llm_datadist.status import CacheLinkError

_log = logging.getLogger("cachelink_agent.csi")
_POLL_S = 0.1


class NotGranted(CacheLinkError, PermissionError):
    """No instance on this node grants the pod the CacheLink its volume names."""


class VolumeConflict(CacheLinkError, FileExistsError):
    """The volume id is published already, for another pod or at another target path."""


class CsiPlugin:
    """Published volumes and their folders; tells the instance manager which pod sockets to serve."""

    def __init__(
        self,
        folders: Folders,
        store: VolumeStore,
        granting: Callable[[Callable[[models.AttachPolicy], bool]], list[str]],
        sync: Callable[[], Awaitable[None]],
        grant_wait: float,
        node_name: str,
        kubelet_dir: Path,
    ) -> None:
        self.folders = folders
        self.kubelet_dir = kubelet_dir
        self.store = store
        self._granting = granting
        self._sync = sync
        self.grant_wait = grant_wait
        self.node_name = node_name
        self.volumes: dict[str, Volume] = {}
        self._lock = asyncio.Lock()

    def restore(self) -> None:
        """Load the published volumes and bring their folders back (before the instances restore).

        A volume whose pod folder the kubelet has removed meanwhile (the pod is gone, and its unpublish
        came while no agent ran) is dropped with its folder.
        """
        self.folders.prepare()
        self.volumes = self.store.load()
        for volume in list(self.volumes.values()):
            if not self.pod_dir_exists(volume):
                _log.warning("pod %s of volume %s is gone: dropping it", volume.pod, volume.volume_id)
                self.folders.unpublish(volume.volume_id, volume.target_path)
                del self.volumes[volume.volume_id]
                continue
            try:
                self.folders.restore(volume)
            except OSError as error:
                _log.error("volume %s of pod %s cannot be restored: %s", volume.volume_id, volume.pod, error)
        self.store.save(self.volumes)
        if self.volumes:
            _log.info("restored %d CSI volumes", len(self.volumes))

    def pod_dir_exists(self, volume: Volume) -> bool:
        """True while the kubelet keeps the pod's folder (``<kubelet-dir>/pods/<uid>``)."""
        return self.kubelet_dir.joinpath("pods", volume.pod_uid).is_dir()

    def pod_sockets_of(self, instance: str, policy: models.AttachPolicy) -> dict[str, str]:
        """The pod sockets ``instance`` should serve: one in each published volume its policy grants."""
        return {
            self.folders.socket(v.volume_id, instance): v.pod_uid
            for v in self.volumes.values()
            if v.granted_by(policy)
        }

    async def _wait_for_grant(self, volume: Volume) -> list[str]:
        deadline = time.monotonic() + self.grant_wait
        while True:
            names = self._granting(volume.granted_by)
            if names or time.monotonic() >= deadline:
                return names
            await asyncio.sleep(_POLL_S)

    async def publish(self, volume: Volume) -> list[str]:
        """Mount the volume's folder at its target; returns the instances whose sockets it holds."""
        known = self.volumes.get(volume.volume_id)
        if known is not None and known != volume:
            raise VolumeConflict(
                f"volume {volume.volume_id} is published for pod {known.pod} at {known.target_path}"
            )
        names = await self._wait_for_grant(volume)
        if not names:
            raise NotGranted(
                f"no instance of CacheLink {volume.namespace}/{volume.cachelink} on node {self.node_name} "
                f"grants pod {volume.pod} (uid {volume.pod_uid}) after {self.grant_wait:g} s: a pod attaches "
                "only through a CacheLink of its own namespace that selects it"
            )
        async with self._lock:
            if volume.volume_id not in self.volumes:
                self.volumes[volume.volume_id] = volume
                await asyncio.to_thread(self.store.save, dict(self.volumes))
            await self._sync()  # the sockets are there before the pod's containers start
            try:
                await asyncio.to_thread(self.folders.publish, volume)
            except OSError:
                await self._forget(volume.volume_id, volume.target_path)
                raise
        _log.info("published volume %s for pod %s: %s", volume.volume_id, volume.pod, ", ".join(names))
        return names

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        """Revoke the volume's sockets, unmount and remove its folder; idempotent."""
        check_volume_id(volume_id)
        if not target_path.startswith("/"):
            raise InvalidVolume(f"target_path {target_path!r} is not an absolute path")
        async with self._lock:
            known = self.volumes.get(volume_id)
            if known is not None and known.target_path != target_path:
                raise VolumeConflict(f"volume {volume_id} is published at {known.target_path}, not there")
            await self._forget(volume_id, target_path)
        _log.info("unpublished volume %s (%s)", volume_id, target_path)

    async def _forget(self, volume_id: str, target_path: str) -> None:
        if self.volumes.pop(volume_id, None) is not None:
            await self._sync()  # sockets revoked: sessions through them end
        await asyncio.to_thread(self.folders.unpublish, volume_id, target_path)
        await asyncio.to_thread(self.store.save, dict(self.volumes))
