"""Run a pod's container as a local process, the way a kubelet on that pod's node would.

KWOK marks the pods of the agent DaemonSet and the operator Deployment Running without running
anything; :class:`PodProcess` runs the container for real: the plan comes from the Pod object the API
server holds (:mod:`cachelink.localstack.podspec`), volumes are materialised under a folder per pod
(Secrets and ConfigMaps written out, the ServiceAccount token requested bound to the pod, host paths in a
folder per node), and the process starts in a mount namespace of its own where each volume sits at its
``mountPath`` (:mod:`cachelink.localstack.pod_exec`). Two substitutions remain, both what the kubelet
and kube-proxy would provide: ``KUBERNETES_SERVICE_HOST``/``PORT`` name the API server's real address,
and the image's environment is this interpreter's (its ``bin`` folder first on ``PATH``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cachelink.localstack import podspec
from cachelink.localstack.kube import Kube
from cachelink.localstack.procs import ManagedProcess, child_env, python_argv

#: where host paths under /dev/shm live locally: pools must stay on a memory filesystem
SHM = Path("/dev/shm")
IMAGE_USER = 65532  # the Dockerfile's USER
DEFAULT_TOKEN_SECONDS = 3607


def image_env() -> dict[str, str]:
    """The image's variables (the Dockerfile's ``ENV``), with this interpreter's venv on ``PATH``."""
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if os.environ.get("PYTHONPATH"):  # a development checkout: what this process imports
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def in_mount_namespace(plan: podspec.ContainerPlan, plan_file: Path) -> list[str]:
    """The command line that runs ``plan`` in a mount namespace of its own (plan written to ``plan_file``)."""
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(asdict(plan), indent=1))
    plan_file.chmod(0o600)
    prefix = ["unshare", "--mount", "--propagation", "private", "--"]
    return prefix + python_argv("cachelink.localstack.pod_exec", str(plan_file))


def host_path_mounts(pod: dict[str, Any], container: str, node: Node) -> list[podspec.Mount]:
    """The host-path volumes of a container of ``pod``, as a workload pod on ``node`` mounting the same
    host paths at the same places would see them (the agent's attach sockets and pools)."""
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["spec"].get("volumes") or [] if "hostPath" in v}
    found = next(c for c in pod["spec"]["containers"] if c["name"] == container)
    return [
        podspec.Mount(str(node.host_path(volumes[m["name"]])), m["mountPath"])
        for m in found.get("volumeMounts") or []
        if m["name"] in volumes
    ]


class Node:
    """Local folders standing in for one node's filesystem (its host paths)."""

    def __init__(self, name: str, root: Path, shm_root: Path) -> None:
        self.name, self.root, self.shm_root = name, root, shm_root

    def host_path(self, path: str) -> Path:
        """The local folder of host path ``path`` on this node (created, mode 0755)."""
        relative = path.strip("/")
        local = self.shm_root / relative if Path(path).is_relative_to(SHM) else self.root / relative
        local.mkdir(parents=True, exist_ok=True, mode=0o755)
        return local


class PodSources:
    """:class:`podspec.Sources` backed by the API server (admin credentials) and local folders."""

    def __init__(self, kube: Kube, pod_dir: Path, node: Node) -> None:
        self.kube, self.pod_dir, self.node = kube, pod_dir, node

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's decoded data."""
        found = self.kube.get("secret", name, "-n", namespace)
        if found is None:
            return None
        return {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}

    def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's data."""
        found = self.kube.get("configmap", name, "-n", namespace)
        return None if found is None else dict(found.get("data") or {})

    def volume_dir(self, pod: dict[str, Any], volume: dict[str, Any]) -> str:
        """The volume's local folder, filled the first time (kept across container restarts)."""
        if "hostPath" in volume:
            return str(self.node.host_path(volume["hostPath"]["path"]))
        medium = (volume.get("emptyDir") or {}).get("medium")
        base = self.node.shm_root / "pods" / self.pod_dir.name if medium == "Memory" else self.pod_dir
        local = base / "volumes" / volume["name"]
        fresh = not local.exists()
        local.mkdir(parents=True, exist_ok=True)
        local.chmod(0o755)
        if "emptyDir" in volume:
            return str(local)
        if "projected" in volume:  # tokens expire: written at every start
            self._projected(pod, volume["projected"], local)
        elif fresh and "secret" in volume:
            self._keys(pod, volume["secret"], local, secret=True)
        elif fresh and "configMap" in volume:
            self._keys(pod, volume["configMap"], local, secret=False)
        elif fresh and "downwardAPI" in volume:
            self._downward(pod, volume["downwardAPI"], local)
        elif fresh:
            raise podspec.PodSpecError(f"volume {volume['name']}: unsupported kind {sorted(volume)}")
        return str(local)

    def _keys(self, pod: dict[str, Any], source: dict[str, Any], local: Path, secret: bool) -> None:
        namespace = pod["metadata"]["namespace"]
        name = source.get("secretName") or source.get("name") or ""
        raw = self.secret_data(namespace, name) if secret else self.config_map_data(namespace, name)
        if raw is None:
            if source.get("optional"):
                return
            raise podspec.PodSpecError(f"{'Secret' if secret else 'ConfigMap'} {namespace}/{name} not found")
        data = {k: v if isinstance(v, bytes) else v.encode() for k, v in raw.items()}
        mode = int(source.get("defaultMode", 0o644))
        items = source.get("items") or [{"key": k, "path": k} for k in sorted(data)]
        for item in items:
            if item["key"] in data:
                _write(local / item["path"], data[item["key"]], int(item.get("mode", mode)))

    def _downward(self, pod: dict[str, Any], source: dict[str, Any], local: Path) -> None:
        mode = int(source.get("defaultMode", 0o644))
        for item in source.get("items") or []:
            value = podspec.field_value(pod, item["fieldRef"]["fieldPath"])
            _write(local / item["path"], value.encode(), int(item.get("mode", mode)))

    def _projected(self, pod: dict[str, Any], projected: dict[str, Any], local: Path) -> None:
        mode = int(projected.get("defaultMode", 0o644))
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                token = self._token(pod, source["serviceAccountToken"])
                _write(local / source["serviceAccountToken"]["path"], token.encode(), mode)
            elif "configMap" in source:
                self._keys(pod, {"defaultMode": mode, **source["configMap"]}, local, secret=False)
            elif "secret" in source:
                self._keys(pod, {"defaultMode": mode, **source["secret"]}, local, secret=True)
            elif "downwardAPI" in source:
                self._downward(pod, {"defaultMode": mode, **source["downwardAPI"]}, local)

    def _token(self, pod: dict[str, Any], source: dict[str, Any]) -> str:
        """A TokenRequest for the pod's ServiceAccount, bound to the pod (what the kubelet asks for)."""
        meta = pod["metadata"]
        argv = [
            "create",
            "token",
            pod["spec"].get("serviceAccountName") or "default",
            "-n",
            meta["namespace"],
        ]
        argv += ["--bound-object-kind=Pod", f"--bound-object-name={meta['name']}"]
        argv += [f"--bound-object-uid={meta['uid']}"]
        argv.append(f"--duration={int(source.get('expirationSeconds', DEFAULT_TOKEN_SECONDS))}s")
        if source.get("audience"):
            argv.append(f"--audience={source['audience']}")
        return self.kube.kubectl(*argv).stdout.strip()


class PodProcess:
    """One container of one pod, run locally; restartable like a container (volumes are kept)."""

    def __init__(self, kube: Kube, pod: dict[str, Any], container: str, root: Path, node: Node) -> None:
        meta = pod["metadata"]
        self.kube, self.container, self.node = kube, container, node
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = root / "pods" / f"{self.namespace}_{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "node").write_text(node.name)  # for a later run's clean-up messages
        self.sources = PodSources(kube, self.dir, node)
        self.log = self.dir / f"{container}.log"
        self.managed = ManagedProcess(f"{self.name}/{container}", self.dir / f"{container}.pid", self.log)
        self.pod = pod
        self.plan: podspec.ContainerPlan | None = None

    @property
    def process(self) -> Any:
        """The ``Popen`` while this object started it."""
        return self.managed.process

    @property
    def running(self) -> bool:
        """The container's process is alive."""
        return self.managed.running

    def kubelet_env(self) -> dict[str, str]:
        """Variables the kubelet adds: the pod's host name and the API server's Service."""
        server = urlsplit(str(self.kube.server()))
        host, port = server.hostname or "127.0.0.1", str(server.port or 443)
        spec = self.pod["spec"]
        hostname = spec.get("nodeName") if spec.get("hostNetwork") else self.name
        return {
            "HOSTNAME": str(hostname),
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
        }

    def start(self, header: str = "start") -> PodProcess:
        """Work out the plan from the pod as the API server holds it now and start the process."""
        pod = self.kube.get("pod", self.name, "-n", self.namespace)
        if pod is None or pod["metadata"]["uid"] != self.uid:
            raise podspec.PodSpecError(f"pod {self.namespace}/{self.name} ({self.uid}) no longer exists")
        self.pod = pod
        base = {**image_env(), **self.kubelet_env()}
        self.plan = podspec.plan(pod, self.container, self.sources, base, image_user=IMAGE_USER)
        argv = in_mount_namespace(self.plan, self.dir / f"{self.container}.plan.json")
        self.managed.start(argv, child_env(), self.dir, header=header)
        return self

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> bool:
        """Stop the process (SIGKILL: a crash); returns whether it was running."""
        return self.managed.stop(sig, grace)

    def remove(self) -> None:
        """Stop and delete the pod's local folders (not the node's host paths)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.node.shm_root / "pods" / self.dir.name, ignore_errors=True)
