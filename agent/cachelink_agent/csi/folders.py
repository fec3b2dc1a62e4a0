"""The per-volume socket folders and their mounts: what NodePublishVolume and NodeUnpublishVolume do.

Each published volume gets a folder ``<run-dir>/csi/v-<hash of the volume id>`` (0755, under a 0700
``csi`` folder no other user of the node can enter), bound read-only at the kubelet's target path. The
instances that grant the volume's pod serve a socket in it (``<instance>.sock``); the folder's content
follows the grants for as long as the volume is published.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from pathlib import Path

from cachelink_agent.csi import mounts
from cachelink_agent.csi.volumes import Volume

_log = logging.getLogger("cachelink_agent.csi")
_MAX_STACKED_MOUNTS = 8


class Folders:
    """Makes, mounts, unmounts and removes the volumes' folders under ``<run-dir>/csi``."""

    def __init__(self, run_dir: Path) -> None:
        self.root = run_dir / "csi"

    def prepare(self) -> None:
        """Create the root folder, private to the agent."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)

    def folder(self, volume_id: str) -> Path:
        """The folder of a volume (a hash: the kubelet's ids are long, and socket paths must stay short)."""
        return self.root / f"v-{hashlib.sha256(volume_id.encode()).hexdigest()[:24]}"

    def socket(self, volume_id: str, instance: str) -> str:
        """Where an instance's socket for this volume's pod lies."""
        return str(self.folder(volume_id) / f"{instance}.sock")

    def publish(self, volume: Volume) -> None:
        """Make the folder and bind it at the target path (created if the kubelet did not); idempotent."""
        folder = self.folder(volume.volume_id)
        folder.mkdir(mode=0o755, exist_ok=True)
        folder.chmod(0o755)  # the pod's uid (any) lists it and reaches the sockets
        target = Path(volume.target_path)
        target.mkdir(mode=0o750, parents=False, exist_ok=True)
        if not mounts.is_mount_point(target):
            mounts.bind_read_only(folder, target)

    def unpublish(self, volume_id: str, target_path: str) -> None:
        """Unmount the target (if mounted), remove it and the folder; idempotent."""
        target = Path(target_path)
        for _ in range(_MAX_STACKED_MOUNTS):  # a retried publish may have stacked a second mount
            if not mounts.is_mount_point(target):
                break
            mounts.unmount(target)
        if mounts.is_mount_point(target):
            raise OSError(f"{target} is still mounted after {_MAX_STACKED_MOUNTS} unmounts")
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()
        shutil.rmtree(self.folder(volume_id), ignore_errors=True)

    def restore(self, volume: Volume) -> None:
        """After an agent restart: the folder is mounted (while the pod's target is there), with no sockets.

        The workers died with the old agent, so their socket files are stale: removed here, bound again as
        each instance starts.
        """
        folder = self.folder(volume.volume_id)
        folder.mkdir(mode=0o755, exist_ok=True)
        for path in folder.glob("*.sock"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        target = Path(volume.target_path)
        if target.parent.is_dir() and not mounts.is_mount_point(target):
            _log.warning(
                "volume %s of pod %s was not mounted: binding it again", volume.volume_id, volume.pod
            )
            self.publish(volume)
