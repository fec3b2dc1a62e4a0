"""What a container of a pod would run, worked out from the Pod object as the API server holds it.

KWOK runs pods without containers; the local stack runs each product container as a local process
instead, and this module turns the pod into that process's plan the way the kubelet would: the
command and arguments with ``$(VAR)`` references expanded, the environment (values, the Downward API,
Secret and ConfigMap keys, resource fields, ``envFrom``) plus what the kubelet and the image add, the
volume mounts, and the security context (user, group, capabilities, no-new-privileges, read-only root).
Reading Secrets, ConfigMaps and volumes is left to a :class:`Sources` object, so this stays pure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_datadist.status import CacheLinkError

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIXES = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


class PodSpecError(CacheLinkError, ValueError):
    """The pod asks for something the local runner cannot provide."""


class Sources(Protocol):
    """Where Secret/ConfigMap keys and volume contents come from."""

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """The decoded data of a Secret (None when it does not exist)."""

    def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The data of a ConfigMap (None when it does not exist)."""

    def volume_dir(self, pod: dict[str, Any], volume: dict[str, Any]) -> str:
        """A local directory holding the volume's content (created on first use)."""


@dataclass(frozen=True)
class Mount:
    """A volume mount: local ``source`` seen at ``target`` inside the container."""

    source: str
    target: str
    read_only: bool = False


@dataclass
class ContainerPlan:
    """Everything needed to run one container as a local process."""

    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount] = field(default_factory=list)
    uid: int | None = None
    gid: int | None = None
    drop_all_capabilities: bool = False
    no_new_privileges: bool = False
    read_only_root: bool = False
    workdir: str | None = None


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` is ``$``, the rest is kept."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(one, text)


def quantity(text: str | int | float) -> float:
    """A resource quantity (``256Mi``, ``100m``, ``2``) as a number."""
    match = _QUANTITY.match(str(text))
    if not match or match.group(2) not in _SUFFIXES:
        raise PodSpecError(f"not a resource quantity: {text!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def field_value(pod: dict[str, Any], path: str) -> str:
    """A Downward API ``fieldPath`` of the pod."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    sub = _SUBSCRIPT.match(path)
    if sub:
        return str((meta.get(sub.group(1)) or {}).get(sub.group(2), ""))
    raise PodSpecError(f"unsupported fieldPath {path!r}")


def resource_value(container: dict[str, Any], ref: dict[str, Any]) -> str:
    """A ``resourceFieldRef`` (``limits.memory``, ``requests.cpu``...) with its divisor, rounded up."""
    kind, _, name = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None and kind == "requests":
        raw = (resources.get("limits") or {}).get(name)
    if raw is None:
        raise PodSpecError(f"resourceFieldRef {ref['resource']}: not set (node allocatable is unknown here)")
    return str(math.ceil(quantity(raw) / quantity(ref.get("divisor", "1"))))


def _key(data: dict[str, Any] | None, ref: dict[str, Any], what: str) -> str | None:
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise PodSpecError(f"{what} {ref.get('name')!r} has no key {ref['key']!r}")
    value = data[ref["key"]]
    return value.decode() if isinstance(value, bytes) else str(value)


def container_env(
    pod: dict[str, Any], container: dict[str, Any], sources: Sources, base: dict[str, str]
) -> dict[str, str]:
    """``base`` (image and kubelet variables), then ``envFrom``, then ``env`` in order, as a kubelet does."""
    namespace = pod["metadata"]["namespace"]
    env = dict(base)
    for item in container.get("envFrom") or []:
        prefix = item.get("prefix", "")
        if "secretRef" in item:
            data: dict[str, Any] | None = sources.secret_data(namespace, item["secretRef"]["name"])
        else:
            data = sources.config_map_data(namespace, item["configMapRef"]["name"])
        if data is None and not (item.get("secretRef") or item.get("configMapRef") or {}).get("optional"):
            raise PodSpecError(f"envFrom: {item} does not exist")
        for key, item_value in (data or {}).items():
            env[prefix + key] = item_value.decode() if isinstance(item_value, bytes) else str(item_value)
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        value: str | None
        if source is None:
            value = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            value = resource_value(container, source["resourceFieldRef"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = _key(sources.secret_data(namespace, ref["name"]), ref, "Secret")
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            value = _key(sources.config_map_data(namespace, ref["name"]), ref, "ConfigMap")
        else:
            raise PodSpecError(f"env {var['name']}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[var["name"]] = value
    return env


def _mounts(pod: dict[str, Any], container: dict[str, Any], sources: Sources) -> list[Mount]:
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise PodSpecError(f"volumeMount {mount['name']!r} names no volume of the pod")
        source = sources.volume_dir(pod, volume)
        if mount.get("subPath"):
            source = f"{source}/{mount['subPath']}"
        mounts.append(Mount(source, mount["mountPath"], bool(mount.get("readOnly"))))
    return mounts


def _security(pod: dict[str, Any], container: dict[str, Any], image_user: int | None) -> dict[str, Any]:
    pod_ctx = pod["spec"].get("securityContext") or {}
    ctx = container.get("securityContext") or {}
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser", image_user))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup", uid))
    if (ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True) and not uid:
        raise PodSpecError(f"container {container['name']}: runAsNonRoot but it would run as root")
    drops = [c.upper() for c in (ctx.get("capabilities") or {}).get("drop") or []]
    return {
        "uid": uid,
        "gid": gid,
        "drop_all_capabilities": "ALL" in drops,
        "no_new_privileges": ctx.get("allowPrivilegeEscalation") is False,
        "read_only_root": bool(ctx.get("readOnlyRootFilesystem")),
    }


def plan(
    pod: dict[str, Any],
    container_name: str,
    sources: Sources,
    base_env: dict[str, str],
    image_user: int | None = None,
) -> ContainerPlan:
    """The plan of container ``container_name`` of ``pod``; ``base_env``: the image's and kubelet's env."""
    containers = {c["name"]: c for c in pod["spec"].get("containers") or []}
    if container_name not in containers:
        raise PodSpecError(f"pod {pod['metadata']['name']} has no container {container_name!r}")
    container = containers[container_name]
    if not container.get("command"):
        raise PodSpecError(f"container {container_name}: no command (the image's entrypoint is unknown here)")
    env = container_env(pod, container, sources, base_env)
    argv = [expand(part, env) for part in [*container["command"], *(container.get("args") or [])]]
    return ContainerPlan(
        argv=argv,
        env=env,
        mounts=_mounts(pod, container, sources),
        workdir=container.get("workingDir"),
        **_security(pod, container, image_user),
    )
