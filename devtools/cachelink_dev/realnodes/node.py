"""A real node's container runtime: containerd in a network and mount namespace of the node's own.

Work in progress (issue 13, stage 3): the kubelet joins later through the same namespaces. What exists:

- a network namespace ``cl<hash>-<node>`` (the hash names the data directory, so clones never collide),
  with only its loopback up; node and pod addresses will live only there;
- a private mount namespace in which per-node folders are bind-mounted where the chart and the kubelet
  expect them (``/var/lib/kubelet``, ``/run/cachelink``, ``/dev/shm/cachelink``, ``/var/lib/cachelink``),
  so two nodes never share pools, sockets or state; every mount a container makes stays in there;
- containerd with its own root, state and socket under the node folder (CRI: runc, the local pause image);
- images loaded with ``podman save | ctr images import``;
- ``stop`` and ``sweep``: every process in the namespace killed, the namespace removed; the mounts go with
  the mount namespace. ``sweep`` also removes what a killed run left.

A failure to start names the component and its log, and leaves nothing running.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cachelink_dev.devcluster.errors import ComponentExitedError, DevClusterError

#: where each host path of the chart and the kubelet's root is backed, per node (relative folder names)
NODE_MOUNTS = {
    "/var/lib/kubelet": "kubelet",
    "/run/cachelink": "run-cachelink",
    "/dev/shm/cachelink": "shm-cachelink",
    "/var/lib/cachelink": "var-lib-cachelink",
    # containerd's state and sockets at the usual place (a socket path under the node folder is too long)
    "/run/containerd": "run-containerd",
    # container logs: a kubelet removes the log folders of pods that are not its own
    "/var/log/pods": "var-log-pods",
    "/var/log/containers": "var-log-containers",
}
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def netns_prefix(data_dir: Path) -> str:
    """``cl`` + 6 hex digits of the data directory: the prefix of this cluster's namespaces."""
    return "cl" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:6]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise DevClusterError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def namespaces(prefix: str) -> list[str]:
    """This cluster's network namespaces that exist now."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]


def _pids_in(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False).stdout
    return [int(pid) for pid in out.split() if pid.isdigit()]


def _kill_all(pids: list[int], timeout: float = STOP_TIMEOUT_S) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def _remove_netns(netns: str) -> None:
    for _ in range(3):
        pids = _pids_in(netns)
        if not pids:
            break
        _kill_all(pids)
    _ip("netns", "del", netns, check=False)


#: the file in a node's folder listing the host paths its start created (mount points of its bind mounts)
CREATED_MOUNT_POINTS = "created-mount-points"


def _remove_created_mount_points(data_dir: Path) -> None:
    """Remove the empty host folders that node starts created, once no node of this cluster runs."""
    if namespaces(netns_prefix(data_dir)):
        return  # a running node still has its mounts there
    for listing in sorted((data_dir / "nodes").glob(f"*/{CREATED_MOUNT_POINTS}")):
        for line in listing.read_text().splitlines():
            with contextlib.suppress(OSError):  # not empty (someone else's now) or already gone
                Path(line).rmdir()
        listing.unlink(missing_ok=True)


def sweep(data_dir: Path) -> list[str]:
    """Remove every namespace (and the processes in it) that this data directory's nodes made."""
    removed = namespaces(netns_prefix(data_dir))
    for netns in removed:
        _remove_netns(netns)
    _remove_created_mount_points(data_dir)
    return removed


def processes_naming(text: str) -> dict[int, str]:
    """Processes (other than this one) whose command line contains ``text``: pid to command line."""
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # exited while we looked
            continue
        if text in cmdline:
            found[int(proc.name)] = cmdline
    return found


def mounts_naming(text: str) -> list[str]:
    """Mount points of this mount namespace whose mountinfo line contains ``text``."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if text in line]


@dataclass
class ContainerdNode:
    """One node's containerd, in the node's network and mount namespaces."""

    name: str
    data_dir: Path
    containerd_bin: Path
    ctr_bin: Path
    sandbox_image: str
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def root(self) -> Path:
        """The node's folder."""
        return self.data_dir / "nodes" / self.name

    @property
    def netns(self) -> str:
        """The node's network namespace."""
        return f"{netns_prefix(self.data_dir)}-{self.name}"

    @property
    def socket(self) -> Path:
        """containerd's socket as the host sees it (clients connect from the node's mount namespace)."""
        return self.root / "mounts" / "run-containerd" / "containerd.sock"

    @property
    def log(self) -> Path:
        """containerd's log."""
        return self.root / "logs" / "containerd.log"

    @property
    def pid_file(self) -> Path:
        """containerd's pid, as the host sees it."""
        return self.root / "containerd.pid"

    def config(self) -> str:
        """containerd's configuration (version 3)."""
        state = "/run/containerd"  # in the node's mount namespace
        return (
            "version = 3\n"
            f'root = "{self.root / "containerd" / "root"}"\n'
            f'state = "{state}"\n'
            "[grpc]\n"
            f'  address = "{state}/containerd.sock"\n'
            "[plugins.'io.containerd.cri.v1.runtime']\n"
            "  enable_selinux = false\n"
            "  disable_apparmor = true\n"
            "  restrict_oom_score_adj = true\n"
            "  netns_mounts_under_state_dir = true\n"
            "  [plugins.'io.containerd.cri.v1.runtime'.containerd]\n"
            '    default_runtime_name = "runc"\n'
            "    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n"
            '      runtime_type = "io.containerd.runc.v2"\n'
            "      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n"
            '        BinaryName = "/usr/bin/runc"\n'
            "  [plugins.'io.containerd.cri.v1.runtime'.cni]\n"
            '    bin_dirs = ["/usr/lib/cni"]\n'
            f'    conf_dir = "{self.root / "cni"}"\n'
            "[plugins.'io.containerd.cri.v1.images'.pinned_images]\n"
            f'  sandbox = "{self.sandbox_image}"\n'
        )

    def _script(self) -> str:
        """What runs in the node's fresh mount namespace: the bind mounts, then containerd."""
        lines = ["set -e"]
        for target, folder in NODE_MOUNTS.items():
            source = self.root / "mounts" / folder
            lines.append(f"mkdir -p '{target}' && mount --bind '{source}' '{target}'")
        # CSI plugins and Bidirectional volumes need the kubelet's root shared (within this namespace)
        lines.append("mount --make-rshared /var/lib/kubelet")
        config = self.root / "containerd" / "config.toml"
        lines.append(f"exec '{self.containerd_bin}' --config '{config}'")
        return "\n".join(lines)

    def start(self) -> None:
        """Make the namespaces and start containerd; on any failure tear down and raise, naming the log."""
        for folder in (
            "containerd/root",
            "cni",
            "logs",
            *(f"mounts/{m}" for m in NODE_MOUNTS.values()),
        ):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        (self.root / "containerd" / "config.toml").write_text(self.config())
        created = self.root / CREATED_MOUNT_POINTS
        missing = [target for target in NODE_MOUNTS if not Path(target).exists()]
        known = created.read_text().splitlines() if created.exists() else []
        created.write_text("".join(f"{t}\n" for t in sorted({*known, *missing})))
        _remove_netns(self.netns)  # what a killed run left
        _ip("netns", "add", self.netns)
        try:
            _ip("-n", self.netns, "link", "set", "lo", "up")
            env = dict(os.environ, PATH=f"{self.containerd_bin.parent}:{os.environ.get('PATH', '')}")
            with self.log.open("ab") as log:
                process = subprocess.Popen(
                    [
                        # not `ip netns exec`: it remounts /sys, and the cgroup mounts (runc, the
                        # kubelet) would be gone in the node's mount namespace
                        "nsenter",
                        f"--net=/run/netns/{self.netns}",
                        "unshare",
                        "--mount",
                        "--propagation",
                        "private",
                        "sh",
                        "-c",
                        self._script(),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            self._process = process
            self.pid_file.write_text(f"{process.pid}\n")
            deadline = time.monotonic() + START_TIMEOUT_S
            while not self._answers():
                if process.poll() is not None:
                    raise ComponentExitedError(
                        f"containerd of node {self.name} exited with status {process.returncode}; "
                        f"log: {self.log}"
                    )
                if time.monotonic() > deadline:
                    raise ComponentExitedError(
                        f"containerd of node {self.name} did not answer within {START_TIMEOUT_S:.0f}s; "
                        f"log: {self.log}"
                    )
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise

    def ctr(self, *args: str, stdin: bytes | None = None, timeout: float = 300) -> str:
        """Run ``ctr`` against this node's containerd (namespace ``k8s.io``, the kubelet's)."""
        pid = self.pid_file.read_text().strip()
        done = subprocess.run(
            [
                "nsenter",
                "--target",
                pid,
                "--mount",
                "--",
                str(self.ctr_bin),
                "--address",
                "/run/containerd/containerd.sock",
                "--namespace",
                "k8s.io",
                *args,
            ],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise DevClusterError(f"ctr {' '.join(args)} on node {self.name}: {done.stderr.decode()[-1000:]}")
        return done.stdout.decode()

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            self.ctr("version", timeout=10)
        except (DevClusterError, subprocess.TimeoutExpired):
            return False
        return True

    def load_image(self, podman_env: dict[str, str], ref: str) -> None:
        """``podman save REF | ctr images import -``."""
        saved = subprocess.run(
            ["podman", "save", "--format", "oci-archive", ref],
            env=podman_env,
            capture_output=True,
            timeout=600,
            check=False,
        )
        if saved.returncode != 0:
            raise DevClusterError(f"podman save {ref}: {saved.stderr.decode()[-1000:]}")
        self.ctr("images", "import", "--base-name", ref.split(":", maxsplit=1)[0], "-", stdin=saved.stdout)

    def stop(self) -> None:
        """Kill every process in the node's network namespace and remove it (the mounts go with them)."""
        _remove_netns(self.netns)
        if self._process is not None:
            self._process.wait(timeout=STOP_TIMEOUT_S)
            self._process = None
        self.pid_file.unlink(missing_ok=True)
        _remove_created_mount_points(self.data_dir)
