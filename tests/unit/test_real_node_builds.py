"""Real nodes' set-up without building anything: which tools are built, the image context digest, and
the clear error when the machine's package-registry settings are missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cachelink_dev.devcluster import build
from cachelink_dev.realnodes import images

ROOT = Path(__file__).resolve().parents[2]


def test_kubelet_and_kube_proxy_come_from_the_control_planes_module() -> None:
    kubernetes = next(spec for spec in build.SPECS if spec.name == "kubernetes")
    assert kubernetes.binaries["kubelet"] == "k8s.io/kubernetes/cmd/kubelet"
    assert kubernetes.binaries["kube-proxy"] == "k8s.io/kubernetes/cmd/kube-proxy"
    gomod = (ROOT / "hack" / "tools" / "kubernetes" / "go.mod").read_text()
    tools = re.search(r"^tool \((.*?)^\)", gomod, re.MULTILINE | re.DOTALL)
    assert tools is not None
    assert set(tools.group(1).split()) == set(kubernetes.binaries.values())


def test_containerd_is_2x_static_and_only_for_real_nodes() -> None:
    containerd = next(spec for spec in build.SPECS if spec.name == "containerd")
    assert containerd.real_nodes_only and containerd.tags == ("no_btrfs", "no_devmapper", "no_zfs")
    version = build.module_version(ROOT / "hack" / "tools" / "containerd", containerd.main_module)
    assert version.startswith("v2.")


def test_tags_enter_the_key_only_of_the_tools_that_have_them(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("module x\n")
    helm = next(spec for spec in build.SPECS if spec.name == "helm")
    tagged = build.ToolSpec(helm.name, helm.main_module, helm.binaries, helm.ldflags, tags=("no_zfs",))
    assert build.cache_key(helm, tmp_path, "v1", "go1") != build.cache_key(tagged, tmp_path, "v1", "go1")


def _context(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim-bookworm\n")
    (tmp_path / ".dockerignore").write_text(".venv\nbuild\n**/__pycache__\n*.log\n!keep.log\n")
    (tmp_path / "src" / "__pycache__").mkdir(parents=True)
    (tmp_path / "src" / "a.py").write_text("a = 1\n")
    (tmp_path / "src" / "__pycache__" / "a.pyc").write_bytes(b"x")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "python").write_text("x")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "out.o").write_text("x")
    (tmp_path / "run.log").write_text("x")
    (tmp_path / "keep.log").write_text("x")
    return tmp_path


def test_context_follows_dockerignore(tmp_path: Path) -> None:
    root = _context(tmp_path)
    files = {p.relative_to(root).as_posix() for p in images.context_files(root)}
    assert files == {".dockerignore", "Dockerfile", "keep.log", "src/a.py"}


def test_context_digest_changes_with_what_the_build_sees_only(tmp_path: Path) -> None:
    root = _context(tmp_path)
    first = images.context_digest(root, "base-1")
    (root / "build" / "out.o").write_text("changed")
    (root / "src" / "__pycache__" / "a.pyc").write_bytes(b"changed")
    assert images.context_digest(root, "base-1") == first  # ignored files do not count
    assert images.context_digest(root, "base-2") != first  # another base image does
    (root / "src" / "a.py").write_text("a = 2\n")
    second = images.context_digest(root, "base-1")
    assert second != first
    (root / "Dockerfile").write_text("FROM python:3.11-slim-bookworm\nUSER 1\n")
    assert images.context_digest(root, "base-1") not in (first, second)


def test_the_repositorys_context_leaves_out_local_state() -> None:
    rel = [p.relative_to(ROOT).as_posix() for p in images.context_files(ROOT)]
    assert "Dockerfile" in rel and "pyproject.toml" in rel
    assert not [r for r in rel if r.startswith((".venv/", "build/", ".git/")) or "__pycache__" in r]


def test_missing_registry_settings_stop_the_build_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "absent-pip.conf"))
    with pytest.raises(images.ImageBuildError) as error:
        images.build_mounts(ca_bundle=tmp_path / "absent-ca.crt")
    message = str(error.value)
    assert "absent-ca.crt" in message and "CACHELINK_CA_BUNDLE" in message and "pip configuration" in message
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "pip.conf").write_text("[global]\n")
    mounts = images.build_mounts(ca_bundle=tmp_path / "ca.crt", pip_config=tmp_path / "pip.conf")
    assert mounts == [
        "-v",
        f"{tmp_path / 'ca.crt'}:/etc/ssl/certs/ca-certificates.crt:ro",
        "-v",
        f"{tmp_path / 'pip.conf'}:/etc/pip.conf:ro",
    ]
