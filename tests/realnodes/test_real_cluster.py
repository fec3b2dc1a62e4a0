"""The product on real nodes: kubelets running containers through containerd and runc, CNI pod networks,
kube-proxy, the API server reaching every kubelet, and the chart installed with ``helm install --wait``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cachelink_dev.procs import wait_for
from cachelink_dev.realnodes.cluster import RealNodes

pytestmark = pytest.mark.e2e

NAMESPACE = "cachelink-system"
HTTP_PORT = 8080


def kubectl(nodes: RealNodes, *args: str, input: str | None = None, timeout: float = 120) -> str:
    return nodes.cluster.kubectl(*args, input=input, timeout=timeout).stdout


def get(nodes: RealNodes, *args: str) -> Any:
    return json.loads(kubectl(nodes, "get", "-o", "json", *args))


def web_pod(name: str, node: str, image: str) -> dict[str, Any]:
    """A pod of the product image serving HTTP on :data:`HTTP_PORT`, pinned to ``node``."""
    server = (
        "import http.server; print('serving', flush=True); "
        f"http.server.ThreadingHTTPServer(('0.0.0.0', {HTTP_PORT}), http.server.SimpleHTTPRequestHandler)"
        ".serve_forever()"
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "web",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", server],
                    "ports": [{"containerPort": HTTP_PORT}],
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def web(real_nodes: RealNodes, product_image: str) -> dict[str, dict[str, Any]]:
    """One web pod on each node and a Service over both; Running pods by node."""
    objects = [web_pod(f"web-{node}", node, product_image) for node in real_nodes.names]
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": HTTP_PORT}]},
        }
    )
    kubectl(
        real_nodes,
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )

    def running() -> dict[str, dict[str, Any]] | None:
        pods = get(real_nodes, "pods", "-n", "default", "-l", "app=web")["items"]
        ready = {
            p["spec"]["nodeName"]: p
            for p in pods
            if p["status"].get("phase") == "Running" and p["status"].get("podIP")
        }
        return ready if set(ready) == set(real_nodes.names) else None

    return wait_for(running, 120, "a web pod Running on each real node")


def test_nodes_are_kubelets_on_containerd_with_addresses_of_their_own(real_nodes: RealNodes) -> None:
    items = get(real_nodes, "nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in items) == sorted(real_nodes.names)
    addresses = set()
    for node in items:
        info = node["status"]["nodeInfo"]
        assert re.fullmatch(r"containerd://2\.\d+\.\d+", info["containerRuntimeVersion"]), info
        assert info["kubeletVersion"] == info["kubeProxyVersion"] or not info["kubeProxyVersion"]
        (internal,) = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert internal in {n.address for n in real_nodes.addressing}
        addresses.add(internal)
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
    assert len(addresses) == len(items)  # every node has its own address
    # the API server's version is the kubelets' (one Kubernetes module)
    server = json.loads(kubectl(real_nodes, "version", "-o", "json"))["serverVersion"]["gitVersion"]
    assert {n["status"]["nodeInfo"]["kubeletVersion"] for n in items} == {server}


def test_each_node_has_its_own_host_paths(real_nodes: RealNodes, web: dict[str, dict[str, Any]]) -> None:
    """What a pod on one node writes under a chart host path is not seen on the other node."""
    first, second = real_nodes.names
    marker = f"written-on-{first}"
    for node in (first, second):
        runtime = real_nodes.containerd(node)
        assert (runtime.root / "mounts" / "run-cachelink").is_dir()
        assert (runtime.root / "mounts" / "kubelet" / "pods").is_dir()  # the kubelet's root is per node
    (real_nodes.containerd(first).root / "mounts" / "run-cachelink" / marker).write_text("x")
    seen = {
        node: subprocess.run(
            [
                "nsenter",
                f"--target={real_nodes.containerd(node).pid_file.read_text().strip()}",
                "--mount",
                "ls",
                "/run/cachelink",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        for node in (first, second)
    }
    assert marker in seen[first] and marker not in seen[second]


def test_logs_exec_and_port_forward_reach_every_kubelet(
    real_nodes: RealNodes, web: dict[str, dict[str, Any]]
) -> None:
    for node, pod in web.items():
        name = pod["metadata"]["name"]
        assert "serving" in kubectl(real_nodes, "logs", name, "-n", "default")
        out = kubectl(
            real_nodes,
            "exec",
            name,
            "-n",
            "default",
            "--",
            "python",
            "-c",
            "import os; print(os.uname().nodename)",
        )
        assert out.strip() == name
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local = probe.getsockname()[1]
        forward = subprocess.Popen(
            [
                str(real_nodes.cluster.kubectl_path),
                f"--kubeconfig={real_nodes.cluster.kubeconfig}",
                "port-forward",
                "-n",
                "default",
                f"pod/{name}",
                f"{local}:{HTTP_PORT}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:

            def answered(local: int = local) -> bytes | None:
                try:
                    with socket.create_connection(("127.0.0.1", local), timeout=5) as conn:
                        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                        return conn.recv(64) or None
                except OSError:
                    return None

            assert wait_for(answered, 60, f"port-forward to {name} on {node}").startswith(b"HTTP/1.0 200")
        finally:
            forward.terminate()
            forward.communicate(timeout=30)


PROBE = """
import json, os, ssl, sys, urllib.request
out = {}
for what, url in json.loads(sys.argv[1]).items():
    out[what] = urllib.request.urlopen(url, timeout=10).status
sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
ctx = ssl.create_default_context(cafile=sa + "ca.crt")
request = urllib.request.Request("https://" + os.environ["KUBERNETES_SERVICE_HOST"] + "/version",
                                 headers={"Authorization": "Bearer " + open(sa + "token").read()})
out["api server"] = json.load(urllib.request.urlopen(request, context=ctx, timeout=10))["gitVersion"]
print(json.dumps(out))
"""


def test_pods_reach_pods_on_other_nodes_services_and_the_api_server(
    real_nodes: RealNodes, web: dict[str, dict[str, Any]]
) -> None:
    first, second = real_nodes.names
    service_ip = get(real_nodes, "service", "web", "-n", "default")["spec"]["clusterIP"]
    targets = {
        "pod on the other node": f"http://{web[second]['status']['podIP']}:{HTTP_PORT}/",
        "service": f"http://{service_ip}/",
    }
    out = kubectl(
        real_nodes,
        "exec",
        web[first]["metadata"]["name"],
        "-n",
        "default",
        "--",
        "python",
        "-c",
        PROBE,
        json.dumps(targets),
    )
    result = json.loads(out)
    server = json.loads(kubectl(real_nodes, "version", "-o", "json"))["serverVersion"]["gitVersion"]
    assert result == {"pod on the other node": 200, "service": 200, "api server": server}
    pod_ips = {node: pod["status"]["podIP"] for node, pod in web.items()}
    for node in real_nodes.addressing:
        assert pod_ips[node.name].startswith(node.pod_cidr.rsplit(".", 2)[0])


# --------------------------------------------------------------------------------- the product


@pytest.fixture(scope="module")
def release(real_nodes: RealNodes, product_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``helm upgrade --install --wait`` of the chart with its defaults (2 operator replicas, agents in
    worker mode), only the image named; returns the release's namespace."""
    repository, tag = product_image.rsplit(":", 1)
    values = tmp_path_factory.mktemp("helm") / "values.yaml"
    values.write_text(
        yaml.safe_dump({"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"}})
    )
    chart = Path(__file__).resolve().parents[2] / "charts" / "cachelink"
    done = subprocess.run(
        [
            str(real_nodes.cluster.helm_path),
            f"--kubeconfig={real_nodes.cluster.kubeconfig}",
            "upgrade",
            "--install",
            "cachelink",
            str(chart),
            "-n",
            NAMESPACE,
            "--create-namespace",
            "-f",
            str(values),
            "--wait",
            "--timeout=240s",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return NAMESPACE


def test_chart_installs_with_wait_on_real_nodes(real_nodes: RealNodes, release: str) -> None:
    deployment = get(real_nodes, "deployment", "cachelink-operator", "-n", release)
    assert deployment["spec"]["replicas"] == 2 and deployment["status"].get("availableReplicas") == 2
    daemonset = get(real_nodes, "daemonset", "cachelink-agent", "-n", release)
    assert daemonset["status"]["numberReady"] == len(real_nodes.names)
    agents = get(real_nodes, "pods", "-n", release, "-l", "app.kubernetes.io/component=agent")["items"]
    assert sorted(p["spec"]["nodeName"] for p in agents) == sorted(real_nodes.names)
    # one replica leads, the other stands by, and both are ready: /readyz through the API server's proxy
    operators = get(real_nodes, "pods", "-n", release, "-l", "app.kubernetes.io/component=operator")["items"]
    answers = []
    for pod in operators:
        port = next(
            p["containerPort"]
            for c in pod["spec"]["containers"]
            for p in c.get("ports", [])
            if p["name"] == "health"
        )
        path = f"/api/v1/namespaces/{release}/pods/{pod['metadata']['name']}:{port}/proxy/readyz"
        answers.append(kubectl(real_nodes, "get", "--raw", path))
    assert sorted(a.strip() for a in answers)[0].startswith(("leading", "standby"))
    assert any("leading" in a for a in answers) and any("standby" in a for a in answers), answers


def cachelink(name: str, prompt: str, decode: str) -> dict[str, Any]:
    return {
        "apiVersion": "cachelink.io/v1alpha1",
        "kind": "CacheLink",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "prompt": {"nodeNames": [prompt]},
            "decode": {"nodeNames": [decode]},
            "options": {"memPoolSizeBytes": 64 * 2**20, "linkAuthentication": True},
        },
    }


def test_cachelinks_link_over_tcp_across_nodes_and_shared_memory_within_one(
    real_nodes: RealNodes, release: str
) -> None:
    first, second = real_nodes.names
    wanted = {"across": (first, second, "tcp"), "within": (first, first, "shm")}
    items = [cachelink(f"link-{name}", prompt, decode) for name, (prompt, decode, _) in wanted.items()]
    kubectl(
        real_nodes, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )

    def ready() -> dict[str, Any] | None:
        found = {i["metadata"]["name"]: i for i in get(real_nodes, "cachelinks", "-n", "default")["items"]}
        if all(found.get(f"link-{n}", {}).get("status", {}).get("phase") == "Ready" for n in wanted):
            return found
        return None

    found = wait_for(ready, 180, "both CacheLinks Ready")
    for name, (_, _, path) in wanted.items():
        (link,) = found[f"link-{name}"]["status"]["links"]
        assert (link["state"], link["dataPath"]) == ("Linked", path), link
        host = link["address"].rsplit(":", 1)[0]
        assert host in {n.address for n in real_nodes.addressing}  # an agent on a node's own address
    kubectl(real_nodes, "delete", "cachelinks", "--all", "-n", "default", "--timeout=120s")


def test_product_containers_are_containerd_tasks(real_nodes: RealNodes, release: str) -> None:
    """Every container of the chart is a task of its node's containerd, run by runc, not a test process."""
    pods = get(real_nodes, "pods", "-n", release)["items"]
    assert pods
    tasks = {node: real_nodes.containerd(node).ctr("tasks", "ls") for node in real_nodes.names}
    for pod in pods:
        for status in pod["status"]["containerStatuses"]:
            runtime, container_id = status["containerID"].split("://")
            assert runtime == "containerd"
            (line,) = [t for t in tasks[pod["spec"]["nodeName"]].splitlines() if t.startswith(container_id)]
            task_pid = int(line.split()[1])
            assert line.split()[2] == "RUNNING"
            # its parent is the runc shim of the node's containerd, not this test run
            parent = int(Path(f"/proc/{task_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            shim = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")[0]
            assert shim.endswith(b"containerd-shim-runc-v2"), shim


def test_e2e_suite_external_mode_passes_against_real_nodes(
    real_nodes: RealNodes, release: str, product_image: str, tmp_path: Path
) -> None:
    """The e2e suite's external mode (a named kubeconfig and image), as a user runs it against their own
    cluster: every API-level test and the image smoke test pass on the real nodes, none skips."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHELINK_E2E", "PYTEST_"))}
    runs = {
        "api": ["-m", "api", "tests/e2e"],
        "image": ["tests/e2e/test_external_mode.py::test_product_image_runs_on_the_cluster"],
    }
    for name, selection in runs.items():
        done = subprocess.run(
            [
                sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", f"--rootdir={root}",
                "-c", str(root / "pyproject.toml"), f"--basetemp={tmp_path / name}", "-q", "-rs",
                f"--e2e-kubeconfig={real_nodes.cluster.kubeconfig}", f"--e2e-image={product_image}",
                *selection,
            ],
            cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        log = f"{name} run, stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-2000:]}"
        assert done.returncode == 0, log
        summary = done.stdout.strip().splitlines()[-1]
        assert "passed" in summary and "skipped" not in summary, log
