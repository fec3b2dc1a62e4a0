"""A pod's container becomes the local process a kubelet would run: arguments, environment, mounts, user."""

from __future__ import annotations

from typing import Any

import pytest

from cachelink.localstack import podspec


class FakeSources:
    """Secrets and ConfigMaps from dicts; volumes at /vol/<name>."""

    def __init__(self) -> None:
        self.secrets = {("ns", "tok"): {"secret": b"s3cret", "other": b"x"}}
        self.config_maps = {("ns", "cfg"): {"mode": "fast", "level": "3"}}

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.secrets.get((namespace, name))

    def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.config_maps.get((namespace, name))

    def volume_dir(self, pod: dict[str, Any], volume: dict[str, Any]) -> str:
        return f"/vol/{volume['name']}"


def pod(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p-1", "namespace": "ns", "uid": "u-1", "labels": {"app": "a"}},
        "spec": {"nodeName": "node-a", "serviceAccountName": "sa", "containers": [container], **spec},
        "status": {"podIP": "10.0.0.7", "hostIP": "192.168.0.2"},
    }


def test_args_expand_env_references_like_the_kubelet() -> None:
    container = {
        "name": "c",
        "command": ["run"],
        "args": ["--listen=$(POD_IP):80", "--id=$(NODE)-$(MISSING)", "--lit=$$(POD_IP)"],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
    }
    plan = podspec.plan(pod(container), "c", FakeSources(), {})
    assert plan.argv == ["run", "--listen=10.0.0.7:80", "--id=node-a-$(MISSING)", "--lit=$(POD_IP)"]


def test_env_sources_and_order() -> None:
    container = {
        "name": "c",
        "command": ["run"],
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "value": "$(A)-$(PATH)"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "secret"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "level"}}},
            {"name": "NONE", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "no", "optional": True}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
        "resources": {"limits": {"memory": "300Mi"}},
    }
    env = podspec.plan(pod(container), "c", FakeSources(), {"PATH": "/bin"}).env
    assert env["B"] == "1-/bin"
    assert env["TOKEN"] == "s3cret"
    assert (env["LEVEL"], env["CFG_mode"]) == ("3", "fast")
    assert "NONE" not in env
    assert (env["APP"], env["MEM"]) == ("a", "300")


def test_missing_secret_key_is_a_clear_error() -> None:
    container = {
        "name": "c",
        "command": ["run"],
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "nope"}}}],
    }
    with pytest.raises(podspec.PodSpecError, match="no key 'nope'"):
        podspec.plan(pod(container), "c", FakeSources(), {})


def test_mounts_and_security_context() -> None:
    container = {
        "name": "c",
        "command": ["run"],
        "volumeMounts": [
            {"name": "s", "mountPath": "/etc/s", "readOnly": True},
            {"name": "h", "mountPath": "/h"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    spec = {
        "volumes": [
            {"name": "s", "secret": {"secretName": "tok"}},
            {"name": "h", "hostPath": {"path": "/x"}},
        ],
        "securityContext": {"runAsUser": 1000, "runAsNonRoot": True},
    }
    plan = podspec.plan(pod(container, **spec), "c", FakeSources(), {})
    assert plan.mounts == [podspec.Mount("/vol/s", "/etc/s", True), podspec.Mount("/vol/h", "/h", False)]
    assert (plan.uid, plan.gid) == (1000, 1000)
    assert plan.drop_all_capabilities and plan.no_new_privileges and plan.read_only_root


def test_run_as_non_root_refuses_root() -> None:
    container = {"name": "c", "command": ["run"], "securityContext": {"runAsUser": 0, "runAsNonRoot": True}}
    with pytest.raises(podspec.PodSpecError, match="runAsNonRoot"):
        podspec.plan(pod(container), "c", FakeSources(), {})


def test_unknown_volume_and_field_are_errors() -> None:
    container = {"name": "c", "command": ["run"], "volumeMounts": [{"name": "gone", "mountPath": "/g"}]}
    with pytest.raises(podspec.PodSpecError, match="names no volume"):
        podspec.plan(pod(container), "c", FakeSources(), {})
    with pytest.raises(podspec.PodSpecError, match="unsupported fieldPath"):
        podspec.field_value(pod(container), "spec.nope")


@pytest.mark.parametrize(("text", "value"), [("256Mi", 256 * 2**20), ("100m", 0.1), ("2", 2), ("1G", 1e9)])
def test_quantities(text: str, value: float) -> None:
    assert podspec.quantity(text) == pytest.approx(value)
