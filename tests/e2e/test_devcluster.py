"""The development cluster is a real Kubernetes: scheduling, controllers, RBAC, tokens, CRDs, restarts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from cachelink_dev.devcluster import DevCluster
from cachelink_dev.devcluster.fixtures import get_json, wait_for
from cachelink_dev.devcluster.nodes import SIMULATED_TOLERATION
from cachelink_dev.devcluster.processes import check_port_free

pytestmark = pytest.mark.e2e


def apply(cluster: DevCluster, *objects: dict[str, object]) -> None:
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    )


@pytest.fixture
def namespace(dev_cluster: DevCluster):
    name = f"t-{uuid.uuid4().hex[:8]}"
    dev_cluster.kubectl("create", "namespace", name)
    yield name
    dev_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pods(cluster: DevCluster, namespace: str, selector: str) -> list[dict]:
    return get_json(cluster, "pods", "-n", namespace, "-l", selector)["items"]


def running(items: list[dict], count: int) -> list[dict] | None:
    done = [p for p in items if p["status"].get("phase") == "Running" and p["spec"].get("nodeName")]
    return done if len(done) == count else None


def test_nodes_ready_with_loopback_ips(dev_cluster: DevCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in get_json(dev_cluster, "nodes")["items"]}
    assert set(nodes) == {n.name for n in dev_cluster.nodes} == {"node-a", "node-b", "node-c"}
    for node in dev_cluster.nodes:
        status = nodes[node.name]["status"]
        assert {"type": "InternalIP", "address": node.ip} in status["addresses"]
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])
    assert [n.ip for n in dev_cluster.nodes] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    out = dev_cluster.kubectl("get", "nodes").stdout
    assert out.count(" Ready ") == 3, out


def test_versions_are_stamped(dev_cluster: DevCluster) -> None:
    version = json.loads(dev_cluster.kubectl("version", "-o", "json").stdout)
    server = dev_cluster.tools.versions["kubernetes"]
    assert version["serverVersion"]["gitVersion"] == server
    assert version["clientVersion"]["gitVersion"] == server
    helm = subprocess.run(
        [str(dev_cluster.helm_path), "version", "--short"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert helm.stdout.startswith(dev_cluster.tools.versions["helm"]), helm.stdout


def test_deployment_pods_are_scheduled_and_running(dev_cluster: DevCluster, namespace: str) -> None:
    apply(
        dev_cluster,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "tolerations": [SIMULATED_TOLERATION],
                        "containers": [{"name": "web", "image": "example.invalid/web:1"}],
                    },
                },
            },
        },
    )
    ready = wait_for(lambda: running(pods(dev_cluster, namespace, "app=web"), 3), 90, "3 Running pods")
    for pod in ready:
        assert pod["status"]["podIP"].startswith("127.1."), pod["status"]
    dev_cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=60s")


def test_hostnetwork_daemonset_gets_node_loopback_ips(dev_cluster: DevCluster, namespace: str) -> None:
    apply(
        dev_cluster,
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {
                        "tolerations": [SIMULATED_TOLERATION],
                        "hostNetwork": True,
                        "containers": [{"name": "agent", "image": "example.invalid/agent:1"}],
                    },
                },
            },
        },
    )
    ready = wait_for(lambda: running(pods(dev_cluster, namespace, "app=agent"), 3), 90, "one agent per node")
    node_ip = {node.name: node.ip for node in dev_cluster.nodes}
    assert {p["spec"]["nodeName"]: p["status"]["podIP"] for p in ready} == node_ip
    # a real process bound on the pod IP stands in for the container
    pod_ip = ready[0]["status"]["podIP"]
    with socket.create_server((pod_ip, 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection((pod_ip, port), timeout=5) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(b"ping")
                assert peer.recv(4) == b"ping"


def test_deleting_an_owner_garbage_collects_dependents(dev_cluster: DevCluster, namespace: str) -> None:
    apply(
        dev_cluster,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner", "namespace": namespace}},
    )
    owner_uid = get_json(dev_cluster, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    apply(
        dev_cluster,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "namespace": namespace,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
                ],
            },
        },
    )
    apply(
        dev_cluster,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "gc", "namespace": namespace},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "gc"}},
                "template": {
                    "metadata": {"labels": {"app": "gc"}},
                    "spec": {
                        "tolerations": [SIMULATED_TOLERATION],
                        "containers": [{"name": "c", "image": "example.invalid/c:1"}],
                    },
                },
            },
        },
    )
    wait_for(lambda: running(pods(dev_cluster, namespace, "app=gc"), 2), 90, "2 Running pods")
    dev_cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    dev_cluster.kubectl("delete", "deployment", "gc", "-n", namespace, "--cascade=background")

    def collected() -> bool:
        dependent = dev_cluster.kubectl("get", "configmap", "dependent", "-n", namespace, check=False)
        replicasets = get_json(dev_cluster, "replicasets", "-n", namespace, "-l", "app=gc")["items"]
        return dependent.returncode != 0 and not replicasets and not pods(dev_cluster, namespace, "app=gc")

    wait_for(collected, 90, "garbage collection of the ConfigMap, ReplicaSet and pods")


def test_namespace_deletion_completes(dev_cluster: DevCluster) -> None:
    name = f"del-{uuid.uuid4().hex[:8]}"
    dev_cluster.kubectl("create", "namespace", name)
    dev_cluster.kubectl("create", "configmap", "c", "-n", name, "--from-literal=k=v")
    overrides = json.dumps({"spec": {"tolerations": [SIMULATED_TOLERATION]}})
    dev_cluster.kubectl("run", "p", "-n", name, "--image=example.invalid/p:1", f"--overrides={overrides}")
    wait_for(lambda: running(pods(dev_cluster, name, "run=p"), 1), 60, "the pod to run")
    dev_cluster.kubectl("delete", "namespace", name, "--wait=false")
    dev_cluster.kubectl("wait", "--for=delete", f"namespace/{name}", "--timeout=120s", timeout=150)


def test_role_binding_and_token_request(dev_cluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    dev_cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    dev_cluster.kubectl("create", "role", "pod-reader", "-n", namespace, "--verb=get,list", "--resource=pods")
    dev_cluster.kubectl(
        "create",
        "rolebinding",
        "reader",
        "-n",
        namespace,
        "--role=pod-reader",
        f"--serviceaccount={namespace}:reader",
    )
    user = f"--as=system:serviceaccount:{namespace}:reader"

    def can(verb: str, resource: str) -> str:
        return dev_cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, user, check=False
        ).stdout.strip()

    assert can("list", "pods") == "yes"
    assert can("delete", "pods") == "no"
    assert can("list", "secrets") == "no"

    token = dev_cluster.kubectl("create", "token", "reader", "-n", namespace, "--duration=10m").stdout.strip()
    admin = yaml.safe_load(dev_cluster.kubeconfig.read_text())
    admin["users"] = [{"name": "reader", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "reader"
    config = tmp_path / "reader.kubeconfig"
    config.write_text(yaml.safe_dump(admin))
    as_reader = [str(dev_cluster.kubectl_path), f"--kubeconfig={config}", "-n", namespace]
    whoami = subprocess.run(
        [*as_reader, "auth", "whoami", "-o", "json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert whoami.returncode == 0, whoami.stderr
    assert (
        json.loads(whoami.stdout)["status"]["userInfo"]["username"]
        == f"system:serviceaccount:{namespace}:reader"
    )
    allowed = subprocess.run(
        [*as_reader, "get", "pods"], capture_output=True, text=True, timeout=60, check=False
    )
    assert allowed.returncode == 0, allowed.stderr
    denied = subprocess.run(
        [*as_reader, "get", "secrets"], capture_output=True, text=True, timeout=60, check=False
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.cachelink.dev"},
    "spec": {
        "group": "test.cachelink.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["replicas", "maxReplicas"],
                                "properties": {
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.replicas <= self.maxReplicas",
                                        "message": "replicas must not exceed maxReplicas",
                                    }
                                ],
                            },
                            "status": {"type": "object", "properties": {"observed": {"type": "integer"}}},
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_with_status_subresource_and_cel_rule(dev_cluster: DevCluster, namespace: str) -> None:
    apply(dev_cluster, CRD)
    dev_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.test.cachelink.dev", "--timeout=60s"
    )

    def widget(name: str, replicas: int, max_replicas: int) -> str:
        return json.dumps(
            {
                "apiVersion": "test.cachelink.dev/v1",
                "kind": "Widget",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"replicas": replicas, "maxReplicas": max_replicas},
            }
        )

    wait_for(
        lambda: (
            dev_cluster.kubectl("create", "-f", "-", input=widget("ok", 1, 2), check=False).returncode == 0
        ),
        30,
        "the Widget kind to be served",
    )
    bad = dev_cluster.kubectl("create", "-f", "-", input=widget("bad", 3, 2), check=False)
    assert bad.returncode != 0
    assert "replicas must not exceed maxReplicas" in bad.stderr
    negative = dev_cluster.kubectl("create", "-f", "-", input=widget("neg", -1, 2), check=False)
    assert negative.returncode != 0
    assert "should be greater than or equal to 0" in negative.stderr
    dev_cluster.kubectl(
        "patch",
        "widget",
        "ok",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"observed": 7}}',
    )
    # the status subresource ignores spec changes and the main resource ignores status changes
    dev_cluster.kubectl(
        "patch", "widget", "ok", "-n", namespace, "--type=merge", "-p", '{"status": {"observed": 9}}'
    )
    assert get_json(dev_cluster, "widget", "ok", "-n", namespace)["status"]["observed"] == 7


def test_helm_installs_and_waits_for_a_chart(dev_cluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **dev_cluster.env(),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
    }

    def helm(*args: str) -> str:
        result = subprocess.run(
            [str(dev_cluster.helm_path), *args],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    helm("create", "demo")
    tolerations = f"tolerations={json.dumps([SIMULATED_TOLERATION])}"  # the simulated nodes' taint
    helm("install", "demo", "./demo", "-n", namespace, "--set-json", tolerations, "--wait", "--timeout=120s")
    releases = json.loads(helm("list", "-n", namespace, "-o", "json"))
    assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]
    helm("uninstall", "demo", "-n", namespace, "--wait", "--timeout=120s")


def test_cluster_memory_is_reported(dev_cluster: DevCluster) -> None:
    status = dev_cluster.status()
    assert status.running
    assert 0 < status.rss_bytes < 4 * 2**30
    print(f"dev cluster RSS: {status.rss_bytes / 2**20:.0f} MiB")


def test_cli_status_and_env(dev_cluster: DevCluster, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from cachelink_dev.devcluster.cli import add_parser

    parser = argparse.ArgumentParser(prog="cachelink")
    add_parser(parser.add_subparsers(dest="command", required=True))
    for action in ("status", "env"):
        args = parser.parse_args(["dev-cluster", action, "--data-dir", str(dev_cluster.data_dir)])
        assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "api server: ready at https://127.0.0.1:" in out
    assert "node-a=127.0.0.2" in out
    assert f"export KUBECONFIG={dev_cluster.kubeconfig}" in out
    assert str(dev_cluster.kubectl_path.parent) in out


def test_kubernetes_replace_list_matches_upstream_go_mod() -> None:
    script = Path(__file__).resolve().parents[2] / "hack" / "gen-k8s-replaces.py"
    result = subprocess.run(
        ["python3", "-P", str(script), "--check"], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_restart_keeps_objects(dev_cluster: DevCluster) -> None:
    """Runs last: stops the whole cluster and starts it again on the same data directory."""
    name = f"survivor-{uuid.uuid4().hex[:6]}"
    dev_cluster.kubectl("create", "configmap", name, "-n", "default", "--from-literal=k=v")
    stopped = dev_cluster.down()
    assert stopped == ["kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
    ports = dev_cluster.ports
    assert ports is not None
    for what, port in ports.named().items():
        check_port_free(port, what)
    assert not dev_cluster.status().running
    dev_cluster.up()
    data = get_json(dev_cluster, "configmap", name, "-n", "default")["data"]
    assert data == {"k": "v"}
    assert {n.name for n in dev_cluster.nodes} <= dev_cluster.ready_nodes()
    dev_cluster.kubectl("delete", "configmap", name, "-n", "default")
