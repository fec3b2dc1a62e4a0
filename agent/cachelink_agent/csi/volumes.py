"""Published CSI volumes: what a publish request must hold, which instances grant it, and their file.

A volume is an ephemeral inline volume of one pod (``podInfoOnMount``): the kubelet names the pod in the
volume context, and the pod names the CacheLink in its volume attributes (``cachelink: NAME``). The pod's
namespace scopes the name: a pod only ever reaches a CacheLink of its own namespace. Published volumes are
kept in ``<state-dir>/csi-volumes.json`` (atomic writes), so a restarted agent still serves them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from cachelink_agent import models, state

POD_NAME = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
POD_UID = "csi.storage.k8s.io/pod.uid"
SERVICE_ACCOUNT = "csi.storage.k8s.io/serviceAccount.name"
EPHEMERAL = "csi.storage.k8s.io/ephemeral"
#: the volume attribute naming the CacheLink
CACHELINK = "cachelink"
VOLUMES_FILE = "csi-volumes.json"
_VERSION = 1

Label = Annotated[str, StringConstraints(pattern=models.DNS1123_LABEL, max_length=63)]
Subdomain = Annotated[str, StringConstraints(pattern=models.DNS1123_SUBDOMAIN, max_length=253)]
_VOLUME_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidVolume(ValueError):
    """A publish request this plugin cannot serve; the message says which field and why."""


class Volume(BaseModel):
    """One published volume: whose it is, which CacheLink it names, where the kubelet mounted it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    volume_id: str
    target_path: str
    namespace: Label
    pod_name: Subdomain
    pod_uid: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$")]
    service_account: str = ""
    cachelink: Subdomain

    @property
    def pod(self) -> str:
        """``namespace/name`` of the pod, for messages."""
        return f"{self.namespace}/{self.pod_name}"

    def granted_by(self, policy: models.AttachPolicy) -> bool:
        """True when an instance with this attach policy grants this volume's pod."""
        return (
            policy.namespace == self.namespace
            and policy.cachelink == self.cachelink
            and self.pod_uid in policy.pod_uids
        )


def check_volume_id(volume_id: str) -> str:
    """``volume_id``, if it can name a folder (the kubelet's are ``csi-<sha256>``)."""
    if not _VOLUME_ID.match(volume_id):
        raise InvalidVolume(f"volume_id {volume_id[:140]!r} must match {_VOLUME_ID.pattern}")
    return volume_id


def parse(volume_id: str, target_path: str, context: Mapping[str, str], kubelet_dir: Path) -> Volume:
    """The volume a NodePublishVolume request describes; ``InvalidVolume`` says what is wrong."""
    check_volume_id(volume_id)
    if context.get(EPHEMERAL) != "true":
        raise InvalidVolume(
            f"only ephemeral inline volumes are served ({EPHEMERAL} is {context.get(EPHEMERAL)!r}): "
            "use a csi volume in the pod spec, and a CSIDriver with volumeLifecycleModes [Ephemeral]"
        )
    missing = [key for key in (POD_NAME, POD_NAMESPACE, POD_UID) if not context.get(key)]
    if missing:
        raise InvalidVolume(f"volume context lacks {', '.join(missing)}: the CSIDriver needs podInfoOnMount")
    if not context.get(CACHELINK):
        raise InvalidVolume(f"volume attribute {CACHELINK!r} (the CacheLink's name) is required")
    unknown = sorted(k for k in context if k != CACHELINK and not k.startswith("csi.storage.k8s.io/"))
    if unknown:
        raise InvalidVolume(f"unknown volume attributes {unknown}; the only one is {CACHELINK!r}")
    try:
        volume = Volume(
            volume_id=volume_id,
            target_path=target_path,
            namespace=context[POD_NAMESPACE],
            pod_name=context[POD_NAME],
            pod_uid=context[POD_UID],
            service_account=context.get(SERVICE_ACCOUNT, ""),
            cachelink=context[CACHELINK],
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidVolume(f"{field}: {first['msg']} (got {str(first.get('input'))[:100]!r})") from None
    pod_dir = kubelet_dir / "pods" / volume.pod_uid
    target = Path(target_path)
    if not target.is_absolute() or ".." in target.parts or not target.is_relative_to(pod_dir):
        raise InvalidVolume(f"target_path {target_path!r} is not inside the pod's folder {pod_dir}")
    return volume


class VolumeStore:
    """The published volumes, by volume id, in one JSON file."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / VOLUMES_FILE

    def load(self) -> dict[str, Volume]:
        """What the file holds (nothing when there is no file)."""
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise state.StateError(f"{self.path} is unreadable: {error}") from None
        if data.get("version") != _VERSION:
            raise state.StateError(f"{self.path} has version {data.get('version')!r}; this agent knows 1")
        try:
            return {key: Volume.model_validate(value) for key, value in data.get("volumes", {}).items()}
        except ValidationError as error:
            raise state.StateError(f"{self.path} holds an invalid volume: {error}") from None

    def save(self, volumes: Mapping[str, Volume]) -> None:
        """Replace the file atomically."""
        data = {"version": _VERSION, "volumes": {k: v.model_dump() for k, v in sorted(volumes.items())}}
        state.atomic_write(self.path, json.dumps(data, indent=1).encode())
