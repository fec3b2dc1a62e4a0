"""External mode: the API-level e2e tests against a cluster named explicitly, never the ambient KUBECONFIG.

``test_api_tests_run_against_a_named_cluster`` runs the suite as a user would against an external cluster,
in a nested pytest whose ``CACHELINK_E2E_KUBECONFIG`` names the running development cluster's admin
kubeconfig while an exported ``KUBECONFIG`` points at a server that does not exist: the API-level tests pass,
everything that needs the local development cluster skips, saying why, and no second cluster starts.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import cachelink_e2e_target as target
import pytest
import yaml
from cachelink_e2e_target import KubeTarget

from cachelink_dev.devcluster import DevCluster
from cachelink_dev.devcluster.fixtures import wait_for
from cachelink_dev.procs import child_env

ROOT = Path(__file__).resolve().parents[2]
NESTED_TIMEOUT_S = 300


def decoy_kubeconfig(path: Path) -> Path:
    """A valid kubeconfig whose server does not exist: a client that uses it fails."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "decoy", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "decoy", "user": {"token": "decoy"}}],
                "contexts": [{"name": "decoy", "context": {"cluster": "decoy", "user": "decoy"}}],
                "current-context": "decoy",
            }
        )
    )
    return path


# ------------------------------------------------------------------------------ choosing the target


def test_target_comes_from_the_option_or_its_variable_never_kubeconfig() -> None:
    assert target.settings(None, None, {"KUBECONFIG": "/elsewhere"}).kubeconfig is None
    assert not target.settings(None, None, {target.KUBECONFIG_ENV: ""}).external
    named = target.settings(None, None, {target.KUBECONFIG_ENV: "/a/config", "KUBECONFIG": "/b/config"})
    assert named.kubeconfig == Path("/a/config") and named.external
    assert target.settings("/c/config", None, {target.KUBECONFIG_ENV: "/a/config"}).kubeconfig == Path(
        "/c/config"
    )
    assert target.settings(None, None, {target.IMAGE_ENV: "registry/x:1"}).image == "registry/x:1"
    assert target.settings(None, "registry/y:2", {target.IMAGE_ENV: "registry/x:1"}).image == "registry/y:2"
    assert target.client_env({"KUBECONFIG": "/b/config", "PATH": "/bin"}) == {"PATH": "/bin"}


@pytest.mark.e2e
@pytest.mark.api
def test_exported_kubeconfig_never_changes_the_target(
    kube_target: KubeTarget, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    decoy = decoy_kubeconfig(tmp_path / "decoy.kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(decoy))
    # kubectl as such would follow the exported KUBECONFIG (to a server that does not exist)...
    alone = subprocess.run(
        [str(kube_target.kubectl_path), "get", "--raw", "/version", "--request-timeout=5s"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert alone.returncode != 0, alone.stdout
    # ...the target's does not: it reaches the server of the kubeconfig named for the run
    assert '"gitVersion"' in kube_target.kubectl("get", "--raw", "/version").stdout
    named = yaml.safe_load(kube_target.kubeconfig.read_text())
    context = next(c for c in named["contexts"] if c["name"] == named["current-context"])["context"]
    server = next(c for c in named["clusters"] if c["name"] == context["cluster"])["cluster"]["server"]
    shown = kube_target.kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}")
    assert shown.stdout == server != "https://127.0.0.1:1"
    if kube_target.helm_path is not None:  # and so does its helm
        assert kube_target.helm("list", "--all-namespaces", "-o", "json").stdout.startswith("[")


# ------------------------------------------------------------------------------ the suite, nested


def nested_pytest(
    args: list[str], env: dict[str, str], basetemp: Path, report: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, tuple[str, str]]]:
    """``pytest ARGS`` in a child (this interpreter, this rootdir and config): its result and, per test
    (``module::name``), the outcome (passed, skipped, failed, error) and the skip or failure message."""
    child = child_env()
    # the child's skips are what these tests look at: not failures (CACHELINK_STRICT_SKIPS is the parent's)
    for name in (
        "CACHELINK_E2E_DATA_DIR",
        target.KUBECONFIG_ENV,
        target.IMAGE_ENV,
        "PYTEST_ADDOPTS",
        "CACHELINK_STRICT_SKIPS",
    ):
        child.pop(name, None)
    child.update(env)
    argv = [
        sys.executable,
        "-P",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        f"--rootdir={ROOT}",
        "-c",
        str(ROOT / "pyproject.toml"),
        f"--basetemp={basetemp}",
        f"--junitxml={report}",
        "-rs",
        *args,
    ]
    done = subprocess.run(
        argv, cwd=ROOT, env=child, capture_output=True, text=True, timeout=NESTED_TIMEOUT_S, check=False
    )
    outcomes: dict[str, tuple[str, str]] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            key = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            found: Any = next(iter(case), None)
            kinds = {"skipped": "skipped", "failure": "failed", "error": "error"}
            if found is None or found.tag not in kinds:
                outcomes[key] = ("passed", "")
            else:
                outcomes[key] = (kinds[found.tag], found.get("message", ""))
    return done, outcomes


@pytest.mark.e2e
def test_api_tests_run_against_a_named_cluster(dev_cluster: DevCluster, tmp_path: Path) -> None:
    decoy = decoy_kubeconfig(tmp_path / "decoy.kubeconfig")
    named = {target.KUBECONFIG_ENV: str(dev_cluster.kubeconfig), "KUBECONFIG": str(decoy)}

    # the API-level tests, all of them: they pass against the named cluster, none skips. (In external
    # mode CRDs are never deleted: the ones this test has to add to the development cluster it removes.)
    with target.local_target(dev_cluster).crds():
        done, outcomes = nested_pytest(
            ["tests/e2e", "-m", "api"], named, tmp_path / "api-temp", tmp_path / "api.xml"
        )
    log = f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, log
    assert f"cachelink e2e: external cluster {dev_cluster.kubeconfig.resolve()}" in done.stdout, log
    assert outcomes and {outcome for outcome, _ in outcomes.values()} == {"passed"}, outcomes
    modules = {key.split("::")[0] for key in outcomes}
    assert {"test_api_schema", "test_examples", "test_external_mode"} <= modules, modules
    assert "test_external_mode::test_exported_kubeconfig_never_changes_the_target" in outcomes
    # it used the named cluster and started none of its own
    assert not list((tmp_path / "api-temp").glob("dev-cluster*"))

    # tests of the local development cluster skip, saying why; so does what needs the product's image.
    # The option names the cluster here, and wins over its variable (which names no file).
    local_only = [
        "tests/e2e/test_devcluster.py::test_nodes_ready_with_loopback_ips",
        "tests/e2e/operator_suite/test_operator.py::test_happy_path",
        "tests/e2e/operator_suite/test_policy_status.py::test_policy_status",
        "tests/e2e/test_chart_install.py",
        "tests/e2e/test_external_mode.py::test_api_tests_run_against_a_named_cluster",
    ]
    image = "tests/e2e/test_external_mode.py::test_product_image_runs_on_the_cluster"
    done, outcomes = nested_pytest(
        [f"--e2e-kubeconfig={dev_cluster.kubeconfig}", *local_only, image],
        {**named, target.KUBECONFIG_ENV: str(tmp_path / "no-such.kubeconfig")},
        tmp_path / "local-temp",
        tmp_path / "local.xml",
    )
    log = f"stdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, log
    assert len(outcomes) >= len(local_only) + 1, outcomes
    for key, (outcome, message) in outcomes.items():
        needs_image = key.endswith("test_product_image_runs_on_the_cluster")
        reason = target.NEEDS_IMAGE if needs_image else target.LOCAL_ONLY
        assert outcome == "skipped" and reason in message, (key, outcome, message)
    assert target.LOCAL_ONLY in done.stdout, log  # -rs: the reason is in the summary
    assert not list((tmp_path / "local-temp").glob("dev-cluster*"))


# ------------------------------------------------------------------------------ the product's image


@pytest.mark.e2e
@pytest.mark.opt_in  # needs --e2e-image and an external cluster; CI runs it on the real nodes (test_real_cluster)
def test_product_image_runs_on_the_cluster(
    e2e_image: str, kube_target: KubeTarget, api_namespace: str
) -> None:
    """Both entrypoints of the image start on a node of the external cluster (``--e2e-image``)."""
    secure = {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "entrypoints", "namespace": api_namespace},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [
                {
                    "name": "operator",
                    "image": e2e_image,
                    "command": ["cachelink-operator", "--help"],
                    "securityContext": secure,
                }
            ],
            "containers": [
                {
                    "name": "agent",
                    "image": e2e_image,
                    "command": ["cachelink-agent", "--help"],
                    "securityContext": secure,
                }
            ],
        },
    }
    kube_target.apply(pod)

    def finished() -> str | None:
        found = kube_target.get_json("pod", "entrypoints", "-n", api_namespace) or {}
        phase = found.get("status", {}).get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(finished, 300, "the pod of the image to finish", interval=2)
    logs = kube_target.kubectl("logs", "entrypoints", "-n", api_namespace, "--all-containers", check=False)
    assert phase == "Succeeded", logs.stdout + logs.stderr
    assert "usage: cachelink-operator" in logs.stdout and "usage: cachelink-agent" in logs.stdout, logs.stdout
