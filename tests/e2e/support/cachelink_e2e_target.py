"""Which Kubernetes cluster the e2e suite targets, and kubectl/helm against it.

By default the target is the local development cluster (the ``dev_cluster`` fixture). An external cluster
is named explicitly, with ``--e2e-kubeconfig PATH`` or ``CACHELINK_E2E_KUBECONFIG`` (the option wins); the
ambient ``KUBECONFIG`` is never consulted, and every kubectl/helm call passes ``--kubeconfig`` explicitly
with ``KUBECONFIG`` removed from the child's environment. Against an external cluster only the API-level
tests run (marker ``api``); containers of the product run there only when an image is named with
``--e2e-image IMAGE`` or ``CACHELINK_E2E_IMAGE``.

Loaded once by ``tests/e2e/conftest.py`` and registered as the top-level module ``cachelink_e2e_target``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachelink_dev.devcluster import DevCluster, DevClusterError, ensure_tools

ROOT = Path(__file__).resolve().parents[3]
CRDS = ROOT / "crds"
CRD_NAMES = ("cachelinks.cachelink.io", "cachelinkpolicies.cachelink.io")
#: the field manager of the CRDs the suite applies (server-side)
FIELD_MANAGER = "cachelink-e2e"

KUBECONFIG_OPTION = "--e2e-kubeconfig"
KUBECONFIG_ENV = "CACHELINK_E2E_KUBECONFIG"
IMAGE_OPTION = "--e2e-image"
IMAGE_ENV = "CACHELINK_E2E_IMAGE"

#: why a test that needs the local development cluster skips in external mode
LOCAL_ONLY = "needs a local cluster of its own (development cluster or real nodes); external cluster given"
#: why a test that runs containers of the product skips without an image
NEEDS_IMAGE = (
    f"needs the product's container image on the external cluster: pass {IMAGE_OPTION} IMAGE "
    f"or set {IMAGE_ENV}"
)
#: why such a test skips on the development cluster
NO_CONTAINERS = (
    "the development cluster's nodes are simulated (KWOK): no container runs there; "
    f"name an external cluster ({KUBECONFIG_OPTION}) and an image ({IMAGE_OPTION})"
)

__all__ = [
    "CRDS",
    "CRD_NAMES",
    "FIELD_MANAGER",
    "IMAGE_ENV",
    "IMAGE_OPTION",
    "KUBECONFIG_ENV",
    "KUBECONFIG_OPTION",
    "LOCAL_ONLY",
    "NEEDS_IMAGE",
    "NO_CONTAINERS",
    "ROOT",
    "KubeTarget",
    "KubectlError",
    "Settings",
    "client_env",
    "external_target",
    "local_target",
    "settings",
]


class KubectlError(RuntimeError):
    """A kubectl or helm call that failed (with ``check``)."""


@dataclass(frozen=True)
class Settings:
    """What the run was asked to target: ``kubeconfig`` None means the local development cluster."""

    kubeconfig: Path | None
    image: str | None

    @property
    def external(self) -> bool:
        """Whether an external cluster was named."""
        return self.kubeconfig is not None


def settings(
    kubeconfig_option: str | None, image_option: str | None, environ: Mapping[str, str] | None = None
) -> Settings:
    """The target from the command-line options and ``environ`` (default ``os.environ``).

    The option wins over its variable; an empty value counts as not given. ``KUBECONFIG`` is never read.
    """
    environ = os.environ if environ is None else environ
    kubeconfig = kubeconfig_option or environ.get(KUBECONFIG_ENV) or None
    image = image_option or environ.get(IMAGE_ENV) or None
    return Settings(Path(kubeconfig).expanduser().resolve() if kubeconfig else None, image)


def client_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a kubectl or helm child: this one without ``KUBECONFIG``."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k != "KUBECONFIG"}


@dataclass(frozen=True)
class KubeTarget:
    """A cluster to run kubectl and helm against: ``kubeconfig``, ``kubectl(...)``, ``helm(...)``."""

    kubeconfig: Path
    kubectl_path: Path
    helm_path: Path | None
    #: True for a cluster named with --e2e-kubeconfig / CACHELINK_E2E_KUBECONFIG
    external: bool

    def _run(
        self, argv: list[str], what: str, input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                argv,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=client_env(),
            )
        except subprocess.TimeoutExpired as exc:
            raise KubectlError(f"`{what}` timed out after {timeout:.0f}s") from exc
        if check and result.returncode != 0:
            raise KubectlError(f"`{what}` failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl --kubeconfig=KUBECONFIG ARGS``; raises ``KubectlError`` with its stderr on failure."""
        argv = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        return self._run(argv, f"kubectl {' '.join(args)}", input, check, timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """``helm --kubeconfig KUBECONFIG ARGS``."""
        if self.helm_path is None:
            raise KubectlError("no helm: the tools could not be built and none is on PATH")
        argv = [str(self.helm_path), "--kubeconfig", str(self.kubeconfig), *args]
        return self._run(argv, f"helm {' '.join(args)}", input, check, timeout)

    def get_json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json``, parsed (None when not found)."""
        result = self.kubectl("get", *args, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise KubectlError(f"`kubectl get {' '.join(args)}` failed: {result.stderr.strip()}")
        return json.loads(result.stdout)

    def apply(
        self, *objects: dict[str, Any], dry_run: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` of these objects (``dry_run``: validated by the server, nothing stored).

        The objects go as a stream of documents, not a ``List``: kubectl validates a List's items itself
        (client-side), single objects it leaves to the server."""
        extra = ["--dry-run=server"] if dry_run else []
        body = "\n---\n".join(json.dumps(obj) for obj in objects)
        return self.kubectl("apply", *extra, "-f", "-", input=body, check=check)

    def missing_crds(self) -> list[str]:
        """The CRDs of ``crds/`` the cluster does not have."""
        found = self.kubectl("get", "crd", *CRD_NAMES, "-o", "name", "--ignore-not-found").stdout.split()
        return [
            name for name in CRD_NAMES if f"customresourcedefinition.apiextensions.k8s.io/{name}" not in found
        ]

    @contextlib.contextmanager
    def crds(self) -> Iterator[KubeTarget]:
        """The CRDs of ``crds/`` applied (:meth:`apply_crds`) for the duration.

        On the development cluster the CRDs that were missing before are deleted again afterwards, so that a
        later ``helm install`` of the chart (which templates them) can own them; on an external cluster no CRD
        is ever deleted."""
        missing = self.missing_crds()
        self.apply_crds()
        try:
            yield self
        finally:
            if missing and not self.external:
                self.kubectl("delete", "crd", *missing, "--timeout=120s", check=False, timeout=150)

    def apply_crds(self) -> None:
        """Apply ``crds/`` server-side and wait until they are Established.

        On the development cluster conflicts with other field managers are forced; on an external
        cluster they are not (a conflict there fails instead of overwriting a field another manager owns).
        """
        force = [] if self.external else ["--force-conflicts"]
        self.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", *force, "-f", str(CRDS))
        self.kubectl(
            "wait",
            "--for=condition=Established",
            *(f"crd/{name}" for name in CRD_NAMES),
            "--timeout=60s",
            timeout=90,
        )

    @contextlib.contextmanager
    def namespace(self, prefix: str = "e2e-api") -> Iterator[str]:
        """A namespace of a unique name; its CacheLinks, then the namespace itself, are deleted after."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        try:
            yield name
        finally:
            self.kubectl(
                "delete", "cachelinks.cachelink.io", "--all", "-n", name, "--timeout=60s", check=False
            )
            self.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _on_path(name: str) -> Path | None:
    found = shutil.which(name)
    return Path(found) if found else None


def external_target(kubeconfig: Path, log: Callable[[str], None] = print) -> KubeTarget:
    """The cluster of ``kubeconfig``: the tools' kubectl and helm, or those on PATH if they cannot be built."""
    if not kubeconfig.is_file():
        raise FileNotFoundError(f"{KUBECONFIG_OPTION}/{KUBECONFIG_ENV}: no such file: {kubeconfig}")
    try:
        tools = ensure_tools(log)
    except (DevClusterError, OSError) as error:
        log(f"cannot build the cluster tools ({error}); using kubectl and helm from PATH")
        kubectl, helm = _on_path("kubectl"), _on_path("helm")
    else:
        kubectl, helm = tools.kubectl, tools.helm
    if kubectl is None:
        raise FileNotFoundError("no kubectl: the tools could not be built and none is on PATH")
    return KubeTarget(kubeconfig, kubectl, helm, external=True)


def local_target(cluster: DevCluster) -> KubeTarget:
    """The local development cluster, as a target."""
    return KubeTarget(cluster.kubeconfig, cluster.kubectl_path, cluster.helm_path, external=False)
