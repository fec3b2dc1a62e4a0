"""The images real nodes run, made on this machine (there is no registry): podman under a folder of the
project's, a Debian base made by mmdebstrap, and the product image from the unchanged ``Dockerfile``.

The ``Dockerfile``'s default base stays the official ``python:3.11-slim-bookworm``; here a local
Debian bookworm image with Python 3.11 is stored under that short name (``localhost/``), and
``podman build --pull=never`` resolves ``FROM`` to it. The product image is cached by a digest of the
build context (the files ``.dockerignore`` lets through), the ``Dockerfile`` and the base image's id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cachelink_dev.devcluster.errors import DevClusterError

Log = Callable[[str], None]

#: the short name the ``Dockerfile`` uses; the local base is stored as ``localhost/`` + this
BASE_NAME = "python:3.11-slim-bookworm"
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-pip",
    "python3-dev",
    "python-is-python3",
    "ca-certificates",
)
PRODUCT_REPOSITORY = "localhost/cachelink"
DEFAULT_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CONFIGS = (
    Path("/etc/pip.conf"),
    Path.home() / ".config" / "pip" / "pip.conf",
    Path.home() / ".pip" / "pip.conf",
)
BUILD_TIMEOUT_S = 1800.0


class ImageBuildError(DevClusterError):
    """An image could not be built; the message names the step and its log."""


def images_root() -> Path:
    """Podman's storage and configuration: ``$CACHELINK_IMAGES_DIR`` or ``~/.cache/cachelink/images``."""
    if os.environ.get("CACHELINK_IMAGES_DIR"):
        return Path(os.environ["CACHELINK_IMAGES_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cachelink" / "images"


@dataclass(frozen=True)
class Podman:
    """``podman`` with the project's own configuration and storage (the host's stay untouched)."""

    root: Path = field(default_factory=images_root)

    def env(self) -> dict[str, str]:
        """The environment that points podman at the project's configuration."""
        conf = self.root / "containers.conf"
        storage = self.root / "storage.conf"
        if not conf.is_file() or not storage.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            # runc: crun refuses cgroup v1 hybrid hosts; lower ulimits: no CAP_SYS_RESOURCE for 1048576
            conf.write_text(
                "[containers]\n"
                'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                'log_driver = "k8s-file"\n'
                "[engine]\n"
                'runtime = "runc"\n'
                'cgroup_manager = "cgroupfs"\n'
                'events_logger = "file"\n'
            )
            storage.write_text(
                "[storage]\n"
                'driver = "overlay"\n'
                f'graphroot = "{self.root / "storage"}"\n'
                f'runroot = "{self.root / "run"}"\n'
            )
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(conf)
        env["CONTAINERS_STORAGE_CONF"] = str(storage)
        return env

    def run(self, *args: str, log: Path | None = None, timeout: float = 600) -> str:
        """Run ``podman ARGS``; its output goes to ``log`` when given. Raises :class:`ImageBuildError`."""
        if shutil.which("podman") is None:
            raise ImageBuildError("podman is not installed: run hack/install-node-packages.sh (as root)")
        cmd = ["podman", *args]
        if log is None:
            done = subprocess.run(
                cmd, check=False, env=self.env(), capture_output=True, text=True, timeout=timeout
            )
            if done.returncode != 0:
                raise ImageBuildError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-2000:]}")
            return done.stdout
        with log.open("a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            rc = subprocess.run(
                cmd, check=False, env=self.env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        if rc != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise ImageBuildError(f"`podman {args[0]}` failed with exit status {rc}; log: {log}\n{tail}")
        return ""

    def image_id(self, ref: str) -> str | None:
        """The id of a local image, or None."""
        done = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{.Id}}", ref],
            check=False,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout.strip() or None if done.returncode == 0 else None

    def label(self, ref: str, key: str) -> str | None:
        """One label of a local image, or None."""
        out = self.run("image", "inspect", "--format", "{{json .Labels}}", ref)
        labels = json.loads(out or "null") or {}
        value = labels.get(key)
        return str(value) if value is not None else None


def _debian_mirror() -> str:
    """The machine's Debian mirror (from apt's sources), else deb.debian.org."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            uri = match.group(1)
            if "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


@dataclass
class BaseImage:
    """A Debian bookworm image with Python 3.11 (``python3-dev`` too: the wheel build needs the headers)."""

    podman: Podman = field(default_factory=Podman)
    mirror: str = field(default_factory=_debian_mirror)

    @property
    def ref(self) -> str:
        """Where the base is stored: the ``Dockerfile``'s short name under ``localhost/``."""
        return f"localhost/{BASE_NAME}"

    def key(self) -> str:
        """Hash of the recipe: suite, variant, packages, mirror."""
        recipe = ["bookworm", "minbase", list(BASE_PACKAGES), self.mirror, "no-externally-managed"]
        return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]

    def ensure(self, log: Log) -> str:
        """Build the base unless an image with this recipe's key is there; returns its id."""
        key = self.key()
        if self.podman.image_id(self.ref) and self.podman.label(self.ref, "io.cachelink.base-key") == key:
            image = self.podman.image_id(self.ref)
            assert image is not None
            return image
        if shutil.which("mmdebstrap") is None:
            raise ImageBuildError("mmdebstrap is not installed: run hack/install-node-packages.sh (as root)")
        logs = self.podman.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"base-{key}.log"
        log_path.write_text("")
        log(f"==> base image {self.ref} (Debian bookworm minbase + Python 3.11, mmdebstrap); log: {log_path}")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="cachelink-base-", dir=self.podman.root) as tmp:
            tarball = Path(tmp) / "rootfs.tar"
            cmd = [
                "mmdebstrap",
                "--variant=minbase",
                "--include=" + ",".join(BASE_PACKAGES),
                '--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
                '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
                "bookworm",
                str(tarball),
                self.mirror,
            ]
            with log_path.open("a") as out:
                out.write("$ " + " ".join(cmd) + "\n")
                out.flush()
                rc = subprocess.run(
                    cmd, check=False, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S
                ).returncode
            if rc != 0:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                raise ImageBuildError(f"mmdebstrap failed with exit status {rc}; log: {log_path}\n{tail}")
            self.podman.run(
                "import",
                "--change",
                'CMD ["python3"]',
                "--change",
                f"LABEL io.cachelink.base-key={key}",
                str(tarball),
                self.ref,
                log=log_path,
            )
        image = self.podman.image_id(self.ref)
        if image is None:
            raise ImageBuildError(f"podman import left no {self.ref}; log: {log_path}")
        log(f"==> base image {self.ref} in {time.monotonic() - started:.0f}s: {image[:12]}")
        return image


def _ignore_patterns(root: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """``.dockerignore`` as (exclude, regex) pairs, in order (the last match decides)."""
    path = root / ".dockerignore"
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    if not path.is_file():
        return patterns
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        line = os.path.normpath(line).removeprefix("./") if line else line
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(line[i])
                i += 1
        # a pattern that names a folder excludes everything under it
        patterns.append((exclude, re.compile(f"^{regex}(?:/.*)?$")))
    return patterns


def context_files(root: Path) -> Iterator[Path]:
    """The files of the build context: everything under ``root`` that ``.dockerignore`` lets through."""
    patterns = _ignore_patterns(root)
    can_prune = all(exclude for exclude, _ in patterns)

    def ignored(rel: str) -> bool:
        verdict = False
        for exclude, regex in patterns:
            if regex.match(rel):
                verdict = exclude
        return verdict

    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        if can_prune:
            dirnames[:] = sorted(
                d for d in dirnames if not ignored(d if rel_dir == "." else f"{rel_dir}/{d}")
            )
        else:
            dirnames.sort()
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not ignored(rel):
                yield here / name


def context_digest(root: Path, base_id: str) -> str:
    """Hash of the build context after ``.dockerignore``, the ``Dockerfile`` and the base image's id."""
    digest = hashlib.sha256()
    digest.update(b"base\0" + base_id.encode() + b"\0")
    digest.update(b"Dockerfile\0" + (root / "Dockerfile").read_bytes() + b"\0")
    for path in context_files(root):
        rel = path.relative_to(root).as_posix()
        body = b"link:" + os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        executable = b"x" if os.access(path, os.X_OK) else b"-"
        digest.update(rel.encode() + b"\0" + executable + body + b"\0")
    return digest.hexdigest()


def _pip_config() -> Path | None:
    if os.environ.get("PIP_CONFIG_FILE"):
        return Path(os.environ["PIP_CONFIG_FILE"])
    return next((p for p in PIP_CONFIGS if p.is_file()), None)


def build_mounts(ca_bundle: Path | None = None, pip_config: Path | None = None) -> list[str]:
    """``-v`` options that give the build the machine's CA bundle and pip configuration (read-only).

    The Dockerfile's ``RUN`` steps reach the package registry only through them on this kind of machine,
    so their absence stops the build with a message instead of a pip error deep in its log.
    """
    ca = ca_bundle or Path(os.environ.get("CACHELINK_CA_BUNDLE") or DEFAULT_CA_BUNDLE)
    pip = pip_config or _pip_config()
    missing = []
    if not ca.is_file():
        missing.append(f"the CA bundle {ca} (set CACHELINK_CA_BUNDLE to the machine's bundle)")
    if pip is None or not pip.is_file():
        looked = ", ".join(str(p) for p in PIP_CONFIGS)
        missing.append(f"a pip configuration (PIP_CONFIG_FILE, or one of {looked})")
    if missing:
        raise ImageBuildError(
            "the image build needs the machine's package-registry settings, missing: " + "; ".join(missing)
        )
    assert pip is not None
    return [
        "-v",
        f"{ca}:/etc/ssl/certs/ca-certificates.crt:ro",
        "-v",
        f"{pip}:/etc/pip.conf:ro",
    ]


@dataclass
class ProductImage:
    """The product image from the repository's ``Dockerfile``, tagged by its context digest."""

    root: Path
    podman: Podman = field(default_factory=Podman)

    def ensure(self, base_id: str, log: Log) -> str:
        """Build unless the image of this context digest exists; returns its reference."""
        digest = context_digest(self.root, base_id)
        ref = f"{PRODUCT_REPOSITORY}:ctx-{digest[:16]}"
        if self.podman.image_id(ref):
            return ref
        mounts = build_mounts()
        logs = self.podman.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"product-{digest[:16]}.log"
        log_path.write_text("")
        log(f"==> product image {ref} (Dockerfile, podman build); log: {log_path}")
        started = time.monotonic()
        self.podman.run(
            "build",
            "--pull=never",
            "--network=host",
            *mounts,
            "--label",
            f"io.cachelink.context-digest={digest}",
            "-f",
            str(self.root / "Dockerfile"),
            "-t",
            ref,
            "-t",
            f"{PRODUCT_REPOSITORY}:dev",
            str(self.root),
            log=log_path,
            timeout=BUILD_TIMEOUT_S,
        )
        log(f"==> product image {ref} in {time.monotonic() - started:.0f}s")
        self._drop_older(ref)
        return ref

    def _drop_older(self, keep: str) -> None:
        """Untag the images of earlier contexts (their layers go; the build cache stays)."""
        out = self.podman.run("images", "--format", "{{.Repository}}:{{.Tag}}", PRODUCT_REPOSITORY)
        older = [ref for ref in out.split() if ref.startswith(f"{PRODUCT_REPOSITORY}:ctx-") and ref != keep]
        if older:
            self.podman.run("rmi", "--force", *older)


#: the sandbox ("pause") image each real node's containerd uses; made here, there is no registry
PAUSE_REF = "localhost/pause:cachelink"
PAUSE_CONTAINERFILE = 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'


def kubernetes_module_dir() -> Path:
    """Where the Go module cache holds ``k8s.io/kubernetes`` at the version the tools are built from."""
    from cachelink_dev.devcluster.build import go_env, hack_dir  # noqa: PLC0415 - only when building

    done = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
        cwd=hack_dir() / "tools" / "kubernetes",
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise ImageBuildError(f"cannot find the k8s.io/kubernetes module: {done.stderr.strip()[-500:]}")
    return Path(done.stdout.strip())


@dataclass
class PauseImage:
    """``FROM scratch`` plus a static build of the Kubernetes module's ``build/pause/linux/pause.c``."""

    podman: Podman = field(default_factory=Podman)

    def ensure(self, log: Log, source: Path | None = None) -> str:
        """Build unless an image of this source and recipe exists; returns its reference."""
        pause_c = source or kubernetes_module_dir() / "build" / "pause" / "linux" / "pause.c"
        key = hashlib.sha256(pause_c.read_bytes() + PAUSE_CONTAINERFILE.encode()).hexdigest()[:16]
        if self.podman.image_id(PAUSE_REF) and self.podman.label(PAUSE_REF, "io.cachelink.pause-key") == key:
            return PAUSE_REF
        if shutil.which("gcc") is None:
            raise ImageBuildError("gcc is not installed: the pause image is a static C build")
        logs = self.podman.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"pause-{key}.log"
        log_path.write_text("")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="cachelink-pause-", dir=self.podman.root) as tmp:
            binary = Path(tmp) / "pause"
            cmd = ["gcc", "-static", "-O2", "-DVERSION=cachelink", "-o", str(binary), str(pause_c)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0:
                raise ImageBuildError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-1000:]}")
            (Path(tmp) / "Containerfile").write_text(PAUSE_CONTAINERFILE)
            self.podman.run(
                "build",
                "--pull=never",
                "--network=none",
                "--label",
                f"io.cachelink.pause-key={key}",
                "-t",
                PAUSE_REF,
                tmp,
                log=log_path,
            )
        log(f"==> pause image {PAUSE_REF} in {time.monotonic() - started:.0f}s")
        return PAUSE_REF
