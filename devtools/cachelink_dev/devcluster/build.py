"""Build the development cluster's tools from Go sources once, and cache them outside the clone.

Each tool is a Go module under ``hack/tools/<name>`` (shipped as package data in the wheel). Its binaries
land in ``<cache>/<name>-<version>-<key>/`` where ``key`` hashes the module files, this build recipe and
the Go version, so a fresh clone (or CI) on the same machine reuses them and any change rebuilds.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from cachelink_dev.devcluster.errors import DevClusterError

#: how long one tool's ``go build`` may take before it is abandoned (a cold Kubernetes build is ~15 min)
BUILD_TIMEOUT_S = 3600.0
#: seconds between progress lines while a build runs
PROGRESS_INTERVAL_S = 30.0
#: bump to force a rebuild of every tool when the recipe below changes meaning
RECIPE_VERSION = "1"
MODULE_FILES = ("go.mod", "go.sum")

Log = Callable[[str], None]


class ToolchainError(DevClusterError):
    """The Go toolchain is missing or unusable."""


class ToolBuildError(DevClusterError):
    """``go build`` of a tool failed; the message names its log file."""


@dataclass(frozen=True)
class ToolSpec:
    """How to build one Go module of ``hack/tools``: its binaries and its version stamping."""

    name: str
    main_module: str
    binaries: dict[str, str]
    ldflags: Callable[[str], list[str]]
    extras: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    #: built only for real nodes (``ensure_tools(real_nodes=True)``), not for the KWOK cluster
    real_nodes_only: bool = False


def _kube_ldflags(version: str) -> list[str]:
    major, minor = version.removeprefix("v").split(".")[:2]
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "gitCommit": "",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    return [
        f"-X k8s.io/{pkg}/version.{key}={value}"
        for pkg in ("component-base", "client-go/pkg")
        for key, value in values.items()
    ]


SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="kubernetes",
        main_module="k8s.io/kubernetes",
        binaries={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
            # the real nodes' agents, from the same module (and version) as the control plane
            "kubelet": "k8s.io/kubernetes/cmd/kubelet",
            "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
        },
        ldflags=_kube_ldflags,
    ),
    ToolSpec(
        name="etcd",
        main_module="go.etcd.io/etcd/server/v3",
        binaries={"etcd": "."},
        ldflags=lambda v: [f"-X go.etcd.io/etcd/api/v3/version.GitSHA={v}"],
    ),
    ToolSpec(
        name="kwok",
        main_module="sigs.k8s.io/kwok",
        binaries={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
        ldflags=lambda v: [f"-X sigs.k8s.io/kwok/pkg/consts.Version={v}"],
        # the default stages kwokctl uses: nodes initialise and heartbeat with leases, pods run and end
        extras={
            "stages.yaml": (
                "kustomize/stage/node/fast/node-initialize.yaml",
                "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
                "kustomize/stage/pod/fast/pod-ready.yaml",
                "kustomize/stage/pod/fast/pod-complete.yaml",
                "kustomize/stage/pod/fast/pod-delete.yaml",
            ),
        },
    ),
    ToolSpec(
        name="helm",
        main_module="helm.sh/helm/v4",
        binaries={"helm": "helm.sh/helm/v4/cmd/helm"},
        ldflags=lambda v: [
            f"-X helm.sh/helm/v4/internal/version.version={v}",
            "-X helm.sh/helm/v4/internal/version.gitTreeState=clean",
        ],
    ),
    ToolSpec(
        name="containerd",
        main_module="github.com/containerd/containerd/v2",
        binaries={
            "containerd": "github.com/containerd/containerd/v2/cmd/containerd",
            "containerd-shim-runc-v2": "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
            # images go in with `ctr images import`; the runtime's task list shows what runs
            "ctr": "github.com/containerd/containerd/v2/cmd/ctr",
        },
        ldflags=lambda v: [
            f"-X github.com/containerd/containerd/v2/version.Version={v}",
            "-X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2",
        ],
        # static (CGO_ENABLED=0, as every tool here), without the snapshotters that need C libraries
        tags=("no_btrfs", "no_devmapper", "no_zfs"),
        real_nodes_only=True,
    ),
)


@dataclass(frozen=True)
class Tools:
    """Paths of the built binaries (and data files) of the development cluster."""

    paths: dict[str, Path]
    versions: dict[str, str]

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]

    @property
    def kubectl(self) -> Path:
        """The kubectl built from the same Kubernetes module as the API server."""
        return self.paths["kubectl"]

    @property
    def helm(self) -> Path:
        """The helm v4 binary."""
        return self.paths["helm"]


def hack_dir() -> Path:
    """The ``hack`` folder: ``$CACHELINK_HACK_DIR``, the wheel's package data, or the source tree's."""
    candidates = [Path(os.environ["CACHELINK_HACK_DIR"])] if os.environ.get("CACHELINK_HACK_DIR") else []
    here = Path(__file__).resolve().parent
    candidates += [here / "hack", here.parents[2] / "hack"]
    for candidate in candidates:
        if (candidate / "tools").is_dir():
            return candidate
    raise DevClusterError(f"cannot find the Go modules of the tools (hack/tools); looked in {candidates}")


def cache_root() -> Path:
    """Where built tools live: ``$CACHELINK_TOOLS_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/cachelink/tools``."""
    if os.environ.get("CACHELINK_TOOLS_DIR"):
        return Path(os.environ["CACHELINK_TOOLS_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cachelink" / "tools"


def go_env() -> dict[str, str]:
    """Environment for ``go``: the caller's, with ``GOFLAGS`` that keep module files read-only."""
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=readonly -buildvcs=false").strip()
    return env


def go_version() -> str:
    """The ``go`` toolchain version (e.g. ``go1.26.8``), or a :class:`ToolchainError`."""
    if shutil.which("go") is None:
        raise ToolchainError(
            "the Go toolchain ('go') is not on PATH; install Go >= 1.21 (https://go.dev/doc/install; "
            "it fetches the newer toolchain that hack/tools/*/go.mod asks for from the Go module proxy), "
            "then re-run `cachelink dev-cluster build`"
        )
    try:
        out = subprocess.run(
            ["go", "env", "GOVERSION"], check=True, capture_output=True, text=True, timeout=120, env=go_env()
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"`go env GOVERSION` failed: {exc}") from exc
    return out.stdout.strip()


def module_version(module_dir: Path, module: str) -> str:
    """The version of ``module`` that ``module_dir/go.mod`` requires."""
    text = (module_dir / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise DevClusterError(f"{module_dir / 'go.mod'} does not require {module}")
    return match.group(1)


def module_files(module_dir: Path) -> list[Path]:
    """The files that define a tool's module (what the wheel ships): go.mod, go.sum and Go sources."""
    return sorted(
        p for p in module_dir.rglob("*") if p.is_file() and (p.name in MODULE_FILES or p.suffix == ".go")
    )


def cache_key(spec: ToolSpec, module_dir: Path, version: str, goversion: str) -> str:
    """Hash of the module's files, the recipe and the Go version."""
    digest = hashlib.sha256()
    for path in module_files(module_dir):
        digest.update(path.relative_to(module_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    recipe: list[object] = [RECIPE_VERSION, goversion, spec.binaries, spec.ldflags(version), spec.extras]
    if spec.tags:  # only then: the other tools' keys (and caches) stay as they were
        recipe.append(list(spec.tags))
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Builder:
    """Builds one tool into the cache (under a file lock) unless it is already there."""

    def __init__(self, spec: ToolSpec, goversion: str, log: Log, parallelism: int) -> None:
        self.spec = spec
        self.module_dir = hack_dir() / "tools" / spec.name
        self.version = module_version(self.module_dir, spec.main_module)
        key = cache_key(spec, self.module_dir, self.version, goversion)
        self.target = cache_root() / f"{spec.name}-{self.version}-{key}"
        self.log_path = cache_root() / "logs" / f"{self.target.name}.log"
        self.log = log
        self.parallelism = parallelism

    def ensure(self) -> dict[str, Path]:
        """Return the tool's files, building them first if the cache has none."""
        if not (self.target / "manifest.json").is_file():
            with _locked(cache_root() / "locks" / f"{self.spec.name}.lock"):
                if not (self.target / "manifest.json").is_file():
                    self._build()
        manifest: dict[str, str] = json.loads((self.target / "manifest.json").read_text())
        return {name: self.target / rel for name, rel in manifest.items()}

    def _build(self) -> None:
        names = ", ".join(self.spec.binaries)
        self.log(f"==> building {self.spec.name} {self.version} ({names}); log: {self.log_path}")
        started = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}-", dir=cache_root()))
        try:
            staging.chmod(0o755)
            src = staging / "src"
            src.mkdir()
            for path in module_files(self.module_dir):
                (src / path.relative_to(self.module_dir)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, src / path.relative_to(self.module_dir))
            (staging / "bin").mkdir()
            manifest = self._go_build(src, staging / "bin")
            manifest.update(self._extras(src, staging))
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            shutil.rmtree(src)
            if self.target.exists():
                shutil.rmtree(self.target)
            staging.rename(self.target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.log(
            f"==> built {self.spec.name} {self.version} in {time.monotonic() - started:.0f}s: {self.target}"
        )

    def _go_build(self, src: Path, bindir: Path) -> dict[str, str]:
        """One ``go build`` for all of the tool's binaries (shared packages compile once, links overlap)."""
        ldflags = " ".join(["-s", "-w", *self.spec.ldflags(self.version)])
        packages = list(self.spec.binaries.values())
        # with several packages, -o names a folder and each binary is named after its import path
        output = f"{bindir}{os.sep}" if len(packages) > 1 else str(bindir / next(iter(self.spec.binaries)))
        cmd = [
            "go",
            "build",
            "-v",
            f"-p={self.parallelism}",
            "-trimpath",
            f"-ldflags={ldflags}",
            *([f"-tags={','.join(self.spec.tags)}"] if self.spec.tags else []),
            "-o",
            output,
        ]
        with self.log_path.open("w") as logfile:
            logfile.write("$ " + " ".join([*cmd, *packages]) + "\n")
            logfile.flush()
            self._run_with_progress([*cmd, *packages], src, logfile)
        manifest = {binary: f"bin/{binary}" for binary in self.spec.binaries}
        missing = [name for name in manifest if not (bindir / name).is_file()]
        if missing:
            raise ToolBuildError(
                f"`go build` of {self.spec.name} produced no {missing}; log: {self.log_path}"
            )
        return manifest

    def _run_with_progress(self, cmd: list[str], cwd: Path, logfile: IO[str]) -> None:
        proc = subprocess.Popen(cmd, cwd=cwd, env=go_env(), stdout=logfile, stderr=subprocess.STDOUT)
        started = time.monotonic()
        while True:
            try:
                rc = proc.wait(timeout=PROGRESS_INTERVAL_S)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - started
                if elapsed > BUILD_TIMEOUT_S:
                    proc.kill()
                    proc.wait(timeout=30)
                    raise ToolBuildError(
                        f"building {self.spec.name} took over {BUILD_TIMEOUT_S:.0f}s; see {self.log_path}"
                    ) from None
                with self.log_path.open(errors="replace") as lines:
                    compiled = sum(1 for _ in lines)
                self.log(f"    ... {self.spec.name}: ~{compiled} packages compiled, {elapsed:.0f}s")
        if rc != 0:
            tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
            raise ToolBuildError(
                f"`go build` of {self.spec.name} {self.version} failed with exit status {rc}; "
                f"log: {self.log_path}\n" + "\n".join(tail)
            )

    def _extras(self, src: Path, staging: Path) -> dict[str, str]:
        if not self.spec.extras:
            return {}
        out = subprocess.run(
            ["go", "list", "-m", "-f", "{{.Dir}}", self.spec.main_module],
            cwd=src,
            env=go_env(),
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        module_root = Path(out.stdout.strip())
        manifest: dict[str, str] = {}
        for name, parts in self.spec.extras.items():
            docs = [(module_root / part).read_text().strip() for part in parts]
            (staging / name).write_text("\n---\n".join(docs) + "\n")
            manifest[name] = name
        return manifest


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def ensure_tools(log: Log = _stderr_log, jobs: int = 2, real_nodes: bool = False) -> Tools:
    """Build (or reuse from the cache) every tool of the development cluster and return their paths.

    ``real_nodes`` adds the real nodes' container runtime (containerd). Builds run ``jobs`` at a time,
    largest first; each ``go build -p`` may use every core (at most 2), so
    the machine stays busy while the largest build runs on alone.
    """
    goversion = go_version()
    cache_root().mkdir(parents=True, exist_ok=True)
    parallelism = max(1, min(2, os.cpu_count() or 1))
    lock = threading.Lock()

    def locked_log(line: str) -> None:
        with lock:
            log(line)

    specs = [spec for spec in SPECS if real_nodes or not spec.real_nodes_only]
    builders = [_Builder(spec, goversion, locked_log, parallelism) for spec in specs]
    paths: dict[str, Path] = {}
    versions: dict[str, str] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(builder.ensure): builder for builder in builders}
        for future in concurrent.futures.as_completed(futures):
            builder = futures[future]
            paths.update(future.result())
            versions[builder.spec.name] = builder.version
    return Tools(paths=paths, versions=versions)


def cached_tools(real_nodes: bool = False) -> Tools | None:
    """The tools' paths if every one is already in the cache, else None (never builds)."""
    try:
        goversion = go_version()
    except ToolchainError:
        return None
    paths: dict[str, Path] = {}
    versions: dict[str, str] = {}
    for spec in SPECS:
        if spec.real_nodes_only and not real_nodes:
            continue
        builder = _Builder(spec, goversion, _stderr_log, 1)
        manifest_file = builder.target / "manifest.json"
        if not manifest_file.is_file():
            return None
        manifest: dict[str, str] = json.loads(manifest_file.read_text())
        paths.update({name: builder.target / rel for name, rel in manifest.items()})
        versions[spec.name] = builder.version
    return Tools(paths=paths, versions=versions)
