"""Become a pod's container: runs inside a private mount namespace (``unshare --mount``), then execs.

    unshare --mount --propagation private -- python -P -m cachelink.localstack.pod_exec PLAN.json

PLAN.json is a :class:`cachelink.localstack.podspec.ContainerPlan` as written by
:mod:`cachelink.localstack.podrun`. The volume mounts are bind mounts visible to this process only, so
two "nodes" on one machine each see their own ``/run/cachelink``; the root filesystem is remounted
read-only here when the container asks for it; the user, group, capabilities and no-new-privileges are
applied by ``setpriv`` as the command is executed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

#: console scripts of this distribution, run as modules when the venv has no script (a checkout on
#: PYTHONPATH during development)
CONSOLE_MODULES = {
    "cachelink": "cachelink",
    "cachelink-agent": "cachelink_agent",
    "cachelink-operator": "cachelink_operator",
}


def say(text: str) -> None:
    """A line in the container's log."""
    print(f"pod_exec: {text}", flush=True)


def _mount(*args: str, pass_fds: tuple[int, ...] = ()) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False, pass_fds=pass_fds)
    if done.returncode != 0:
        raise SystemExit(f"pod_exec: mount {' '.join(args)}: {done.stderr.strip()}")


def _bind(source_fd: int, target: str) -> None:
    """Bind the folder or file open as ``source_fd`` at ``target``.

    The source is held open from before the first mount, as a kubelet mounts from the host's view: a
    volume mounted over ``/tmp`` must not hide the source of a later volume that lives under ``/tmp``.
    """
    _mount("--no-canonicalize", "--bind", f"/proc/self/fd/{source_fd}", target, pass_fds=(source_fd,))


def _needed_paths(env: dict[str, str]) -> list[Path]:
    """What the process itself needs from the host: the interpreter, its libraries, PYTHONPATH."""
    paths = {Path(sys.executable).resolve().parent, Path(sys.prefix), Path(sys.base_prefix)}
    paths |= {Path(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p}
    return sorted(paths)


def _hides(target: str, needed: list[Path]) -> Path | None:
    for path in needed:
        if path == Path(target) or Path(target) in path.parents:
            return path
    return None


def _reachable_by_others(path: Path) -> bool:
    """Every folder on the way to ``path`` lets other users through (mode o+x)."""
    return all(os.stat(p).st_mode & 0o001 for p in [*reversed(path.parents), path] if p.is_dir())


def resolve(argv: list[str], env: dict[str, str]) -> list[str]:
    """The command as an absolute path looked up on the container's PATH (console scripts as modules)."""
    if "/" in argv[0]:
        return argv
    found = shutil.which(argv[0], path=env.get("PATH", os.defpath))
    if found:
        return [found, *argv[1:]]
    if argv[0] in CONSOLE_MODULES:
        return [sys.executable, "-P", "-m", CONSOLE_MODULES[argv[0]], *argv[1:]]
    raise SystemExit(f"pod_exec: {argv[0]}: not found on PATH {env.get('PATH')}")


def setup_mounts(plan: dict[str, Any]) -> None:
    """Create mount points, bind every volume, then make the root read-only if asked."""
    needed = _needed_paths(plan["env"])
    mounts = []
    for mount in plan["mounts"]:
        hidden = _hides(mount["target"], needed)
        if hidden is not None:
            say(f"not mounting {mount['target']}: it would hide {hidden}, which this process needs")
            continue
        target = Path(mount["target"])
        if Path(mount["source"]).is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        mounts.append((mount, os.open(mount["source"], os.O_PATH | os.O_CLOEXEC)))
    for mount, source_fd in mounts:
        _bind(source_fd, mount["target"])
        os.close(source_fd)
        if mount.get("read_only"):
            _mount("-o", "remount,bind,ro", mount["target"])
    if plan.get("read_only_root"):  # last: a bind mount made from a read-only mount is read-only too
        _mount("-o", "remount,bind,ro", "/")


def privileges(plan: dict[str, Any], argv: list[str]) -> list[str]:
    """``setpriv`` flags for the plan's user, group, capabilities and no-new-privileges."""
    flags = []
    uid, gid = plan.get("uid"), plan.get("gid")
    if uid is not None and uid != os.getuid():
        unreachable = [p for p in _needed_paths(plan["env"]) if p.exists() and not _reachable_by_others(p)]
        if unreachable:
            say(f"running as uid {os.getuid()}, not {uid}: {unreachable[0]} is not reachable by other users")
        else:
            flags += [f"--reuid={uid}", f"--regid={gid if gid is not None else uid}", "--clear-groups"]
    if plan.get("no_new_privileges"):
        flags.append("--no-new-privs")
    if plan.get("drop_all_capabilities"):
        flags += ["--inh-caps=-all", "--bounding-set=-all"]
    return ["setpriv", *flags, "--", *argv] if flags else argv


def main(argv: list[str] | None = None) -> NoReturn:
    """Read the plan, set up the mounts, exec the container's command."""
    args = sys.argv[1:] if argv is None else argv
    plan: dict[str, Any] = json.loads(Path(args[0]).read_text())
    setup_mounts(plan)
    command = privileges(plan, resolve(plan["argv"], plan["env"]))
    os.chdir(plan.get("workdir") or "/")
    executable = shutil.which(command[0]) or command[0]
    os.execve(executable, command, plan["env"])  # noqa: S606 - the container's command, no shell


if __name__ == "__main__":
    main()
