"""``cachelink demo`` without a cluster: arguments, the KUBECONFIG rule, the shipped data, the summary."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from cachelink.cli import build_parser
from cachelink.kvdemo.kvcache import KvShape
from cachelink_dev.demo.cluster import DEFAULT_DATA_DIR, NODES, resolve_kubeconfig, sample_objects
from cachelink_dev.demo.report import summary
from cachelink_dev.demo.transfer import Transfer
from cachelink_dev.procs import child_env
from cachelink_dev.release.kube import Kube
from cachelink_dev.release.resources import CRD_FILES, DATA_DIR

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str):
    return build_parser().parse_args(["demo", *argv])


def test_an_exported_kubeconfig_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "production.kubeconfig"))
    args = parse()
    assert resolve_kubeconfig(args) is None  # None: the demo's own local cluster
    assert Path(args.data_dir) == DEFAULT_DATA_DIR
    assert "KUBECONFIG" not in child_env()  # nor does any child process inherit it


def test_only_an_explicit_kubeconfig_selects_another_cluster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/somewhere/else")
    args = parse("--kubeconfig", str(tmp_path / "other.kubeconfig"))
    assert resolve_kubeconfig(args) == (tmp_path / "other.kubeconfig").resolve()


def test_kubectl_always_gets_the_explicit_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "kubectl"
    fake.write_text('#!/bin/sh\necho "env=${KUBECONFIG:-unset} args=$*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("KUBECONFIG", "/somewhere/else")
    out = Kube(fake, tmp_path / "demo.kubeconfig").kubectl("get", "nodes").stdout
    assert out.strip() == f"env=unset args=--kubeconfig={tmp_path / 'demo.kubeconfig'} get nodes"


def test_flags() -> None:
    args = parse("--keep", "--data-dir", "/tmp/x")
    assert args.keep and args.data_dir == "/tmp/x" and not args.engine_only and not args.down
    args = parse("--engine-only", "--path", "tcp", "--blocks", "8")
    assert args.engine_only and args.path == "tcp" and args.blocks == 8


def test_shipped_crds_are_the_repository_crds() -> None:
    for name in CRD_FILES:
        assert (DATA_DIR / "crds" / name).read_text() == (ROOT / "crds" / name).read_text(), (
            f"the installed {name} is not the one of crds/: reinstall the package"
        )


def test_sample_policy_is_the_example_and_selects_the_demo_namespace() -> None:
    assert (DATA_DIR / "demo-cachelinkpolicy.yaml").read_text() == (
        ROOT / "examples" / "cachelinkpolicy.yaml"
    ).read_text()
    policy, namespace, cachelink = sample_objects(*NODES)
    selector = policy["spec"]["namespaceSelector"]["matchLabels"]
    assert selector.items() <= namespace["metadata"]["labels"].items()
    assert cachelink["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert cachelink["spec"]["prompt"] == {"nodeNames": ["node-a"]}
    assert cachelink["spec"]["decode"] == {"nodeNames": ["node-b"]}
    limits = policy["spec"]["limits"]
    pool = cachelink["spec"]["options"]["memPoolSizeBytes"]
    assert KvShape().cache_bytes < pool <= limits["maxPoolBytesPerInstance"]


def test_sample_cachelink_is_valid_yaml_for_kubectl() -> None:
    docs = list(yaml.safe_load_all((DATA_DIR / "demo-cachelink.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Namespace", "CacheLink"]


def test_demo_cache_is_realistic_and_small() -> None:
    shape = KvShape()
    assert shape.tensors == 64  # 32 layers x (K, V)
    assert 64 << 20 <= shape.cache_bytes <= 128 << 20


def test_summary_table() -> None:
    obj = {
        "metadata": {"namespace": "inference", "name": "demo-pd"},
        "status": {
            "phase": "Ready",
            "readyLinks": 1,
            "desiredLinks": 1,
            "policies": ["inference-defaults"],
            "instances": [{"name": "p0", "node": "node-a"}, {"name": "d0", "node": "node-b"}],
            "links": [{"prompt": "p0", "decode": "d0", "state": "Linked", "dataPath": "tcp"}],
        },
    }
    text = summary(obj, 1.25, Transfer(128 << 20, 0.1, True, 64))
    lines = text.splitlines()
    assert "Ready 1.2s after apply" in lines[0] and "inference-defaults" in lines[0]
    assert lines[1].split()[:2] == ["link:", "prompt"]
    row = lines[3].split()
    assert row[:6] == ["p0", "(node-a)", "d0", "(node-b)", "Linked", "tcp"]
    assert row[6:9] == ["128", "0.100", "1.34"] and "every byte" in lines[3]
    assert "-" in summary(obj, 1.0, None).splitlines()[3]
