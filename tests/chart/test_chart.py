"""The Helm chart, rendered by the helm built for the local cluster: lint, objects, strict values, no drift."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cachelink_agent import tokens
from cachelink_operator import agent_certs

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cachelink"


def render(helm: str, *sets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [helm, "template", "rel", str(CHART), "--namespace", "cachelink-system"]
    for item in sets:
        argv += ["--set", item]
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def objects(helm: str, *sets: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render(helm, *sets).stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_lint_passes(helm):
    done = subprocess.run([helm, "lint", str(CHART)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_object_carries_the_chart_labels(helm):
    for doc in objects(helm):
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == "rel", doc["metadata"]["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm"


def test_operator_deployment_is_locked_down(helm):
    (deploy,) = by_kind(objects(helm), "Deployment")
    assert deploy["spec"]["replicas"] == 2, "two replicas with a leader Lease by default"
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"livenessProbe", "readinessProbe", "resources"} <= set(container)
    (pdb,) = by_kind(objects(helm), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1


def test_operator_rbac_is_least_privilege_and_agent_has_none(helm):
    docs = objects(helm)
    rules = [rule for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role") for rule in role["rules"]]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule.get("resources", []), rule
    # Secrets: no cluster-wide rule; in the release namespace, get of the three Secrets the operator reads
    assert not [
        r for role in by_kind(docs, "ClusterRole") for r in role["rules"] if "secrets" in r["resources"]
    ]
    secrets = [r for r in rules if "secrets" in r.get("resources", [])]
    assert secrets == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["cachelink-agent-signing-key", "cachelink-link-master", "cachelink-agent-ca"],
            "verbs": ["get"],
        }
    ]
    (master,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "cachelink-link-master"]
    assert len(base64.b64decode(master["data"]["master"])) == 48
    assert master["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    agent_sa = [d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"].endswith("-agent")]
    assert agent_sa and agent_sa[0]["automountServiceAccountToken"] is False
    name = agent_sa[0]["metadata"]["name"]
    # the agent may create and read certificate requests (its own serving certificate), nothing else
    agent_roles = {
        b["roleRef"]["name"]
        for b in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding")
        for s in b["subjects"]
        if s["name"] == name
    }
    assert [
        r["rules"]
        for r in by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
        if r["metadata"]["name"] in agent_roles
    ] == [
        [
            {
                "apiGroups": ["certificates.k8s.io"],
                "resources": ["certificatesigningrequests"],
                "verbs": ["create", "get"],
            }
        ]
    ]
    # the operator approves and signs for its own signer only
    (signers,) = [r for r in rules if "signers" in r.get("resources", [])]
    assert signers["resourceNames"] == ["cachelink.io/agent-serving"] and signers["verbs"] == [
        "approve",
        "sign",
    ]
    # without TLS the agent has no API access at all
    plain = objects(helm, "agentDaemonSet.tls.enabled=false")
    bound = {
        s["name"]
        for b in by_kind(plain, "ClusterRoleBinding") + by_kind(plain, "RoleBinding")
        for s in b["subjects"]
    }
    assert name not in bound
    assert not [
        r for role in by_kind(plain, "ClusterRole") for r in role["rules"] if "signers" in r["resources"]
    ]


def test_agents_serve_tls_with_certificates_from_the_operators_ca(helm):
    """The chart makes a CA only the operator reads; agents request certificates for their pod IP and are
    probed over HTTPS; the operator and Prometheus verify them with the CA's certificate."""
    docs = objects(helm, "serviceMonitor.enabled=true")
    (ca_secret,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "cachelink-agent-ca"]
    cert_pem = base64.b64decode(ca_secret["data"]["tls.crt"])
    agent_certs.SigningCA.from_pem(cert_pem, base64.b64decode(ca_secret["data"]["tls.key"]))  # a CA, its key
    assert ca_secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (ca_map,) = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == "cachelink-agent-ca"]
    assert ca_map["data"]["ca.crt"].encode() == cert_pem
    (daemonset,) = by_kind(docs, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--tls-csr-address=$(POD_IP)" in container["args"] and pod["automountServiceAccountToken"] is True
    assert "cachelink-agent-ca" not in {v.get("secret", {}).get("secretName") for v in pod["volumes"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe
    (operator,) = by_kind(docs, "Deployment")
    assert (
        "--agent-ca-secret=cachelink-agent-ca"
        in operator["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    (monitor,) = by_kind(docs, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"]["configMap"] == {"name": "cachelink-agent-ca", "key": "ca.crt"}
    # turned off: plain HTTP everywhere, no CA
    plain = objects(helm, "agentDaemonSet.tls.enabled=false")
    assert not [s for s in by_kind(plain, "Secret") if s["metadata"]["name"] == "cachelink-agent-ca"]
    (operator,) = by_kind(plain, "Deployment")
    assert "--agent-ca-secret=" in operator["spec"]["template"]["spec"]["containers"][0]["args"]
    (daemonset,) = by_kind(plain, "DaemonSet")
    assert (
        daemonset["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["scheme"] == "HTTP"
    )


def test_agents_verify_tokens_with_the_public_half_only(helm):
    """The chart makes an Ed25519 signing key for the operator and gives the agents only its certificate
    and the metrics credential; Prometheus scrapes with the metrics credential."""
    docs = objects(helm, "serviceMonitor.enabled=true")
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    signing = tokens.load_signing_key(
        base64.b64decode(secrets["cachelink-agent-signing-key"]["data"]["key.pem"])
    )
    (verify,) = [
        c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == "cachelink-agent-verify-key"
    ]
    assert tokens.load_verify_key(verify["data"]["cert.pem"].encode()) == signing.public_key()
    assert len(base64.b64decode(secrets["cachelink-agent-metrics"]["data"]["token"])) == 48
    (daemonset,) = by_kind(docs, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    mounted = {
        v.get("secret", {}).get("secretName") or v.get("configMap", {}).get("name") for v in pod["volumes"]
    }
    assert {"cachelink-agent-verify-key", "cachelink-agent-metrics"} <= mounted
    assert "cachelink-agent-signing-key" not in mounted
    args = pod["containers"][0]["args"]
    assert "--verify-key-file=/etc/cachelink/verify/cert.pem" in args
    (monitor,) = by_kind(docs, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["authorization"]["credentials"] == {"name": "cachelink-agent-metrics", "key": "token"}


def test_agent_daemonset_mounts_pools_and_sizes_memory_for_them(helm):
    (ds,) = by_kind(
        objects(
            helm, "agentDaemonSet.maxPoolBytes=2Gi", "agentDaemonSet.agentMemory=512Mi", "csi.enabled=false"
        ),
        "DaemonSet",
    )
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["automountServiceAccountToken"] is True  # for its certificate
    (container,) = pod["containers"]
    assert {"name": "api", "containerPort": 8470} in container["ports"]
    assert "--max-pool-bytes=2Gi" in container["args"]
    assert container["resources"]["limits"]["memory"] == (2 << 30) + (512 << 20)
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {
        "pools": "/dev/shm/cachelink",
        "run": "/run/cachelink",
        "state": "/var/lib/cachelink",
    }
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in container["securityContext"], "without CSI the agent is unprivileged"
    assert not [a for a in container["args"] if a.startswith("--csi")]
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_csi_driver_and_the_agent_as_its_node_plugin(helm):
    docs = objects(helm, "csi.kubeletDir=/data/kubelet", "csi.grantWaitSeconds=20")
    (driver,) = by_kind(docs, "CSIDriver")
    assert driver["metadata"]["name"] == "cachelink.io"
    assert driver["spec"]["attachRequired"] is False and driver["spec"]["podInfoOnMount"] is True
    assert driver["spec"]["volumeLifecycleModes"] == ["Ephemeral"]
    (ds,) = by_kind(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {
        "--csi-socket=/data/kubelet/plugins/cachelink.io/csi.sock",
        "--kubelet-dir=/data/kubelet",
        "--csi-driver-name=cachelink.io",
        "--csi-grant-wait=20",
    } <= set(container["args"])
    assert container["securityContext"]["privileged"] is True, "Bidirectional propagation needs it"
    assert "allowPrivilegeEscalation" not in container["securityContext"], (
        "the API server rejects it with privileged"
    )
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    for name, path in {
        "csi-plugin": "/data/kubelet/plugins/cachelink.io",
        "csi-registry": "/data/kubelet/plugins_registry",
        "kubelet-pods": "/data/kubelet/pods",
    }.items():
        assert host[name] == path and mounts[name]["mountPath"] == path, "same path inside and out"
    assert mounts["kubelet-pods"]["mountPropagation"] == "Bidirectional"
    assert not by_kind(objects(helm, "csi.enabled=false"), "CSIDriver")


def test_value_sets_change_what_they_say(helm):
    docs = objects(
        helm,
        "agentDaemonSet.hostNetwork=false",
        "agentDaemonSet.inProcess=true",
        "serviceMonitor.enabled=true",
        "crds.enabled=false",
        "crds.keep=false",
        "podSecurity.labelNamespace=true",
    )
    (ds,) = by_kind(docs, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["hostNetwork"] is False
    assert "--in-process" in ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert by_kind(docs, "ServiceMonitor") and by_kind(docs, "PodMonitor")
    assert not by_kind(docs, "CustomResourceDefinition")
    (ns,) = by_kind(docs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    crds = by_kind(objects(helm), "CustomResourceDefinition")
    assert {c["metadata"]["name"] for c in crds} == {
        "cachelinks.cachelink.io",
        "cachelinkpolicies.cachelink.io",
    }
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["agentDaemonSet.hostNetowrk=true"], "additional properties 'hostNetowrk' not allowed"),
        (["agentDaemonSet.logFormat=yaml"], "logFormat"),
        (["agentDaemonSet.maxPoolBytes=lots"], "maxPoolBytes"),
        (["operator.replicas=2", "podDisruptionBudget.minAvailable=2"], "must be below operator.replicas"),
        (["podSecurity.labelNamespace=true", "podSecurity.level=restricted"], "need the privileged level"),
        (["crds.enabled=false"], "crds.keep needs crds.enabled"),
        (["csi.driverName=Not_A_Name"], "driverName"),
        (["csi.kubeletDir=relative/kubelet"], "kubeletDir"),
        (["csi.grantWaitSeconds=0"], "grantWaitSeconds"),
    ],
)
def test_bad_values_fail_with_a_clear_message(helm, sets, message):
    done = render(helm, *sets, check=False)
    assert done.returncode != 0
    assert message in done.stderr


def test_chart_crds_match_crds_dir_and_schema_matches_values():
    for script in ("gen-chart-crds.py", "gen-values-schema.py"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "hack" / script), "--check"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


def _env_fields(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}


def test_pods_bind_their_own_ip_and_take_extra_args(helm):
    """The agent listens on its pod's IP, the operator binds it when asked; extra flags are passed on,
    with the downward API giving what their ``$(VAR)`` names (the kubelet expands them)."""
    docs = objects(
        helm,
        "agentDaemonSet.apiPort=9470",
        "agentDaemonSet.extraArgs={--host-id=$(NODE_NAME)}",
        "operator.bindPodIP=true",
        "operator.extraArgs={--leader-duration=6}",
    )
    agent = _container(by_kind(docs, "DaemonSet")[0])
    assert agent["command"] == ["cachelink-agent"]
    assert {"--listen=$(POD_IP):9470", "--host-id=$(NODE_NAME)"} <= set(agent["args"])
    assert {"POD_IP": "status.podIP", "NODE_NAME": "spec.nodeName"}.items() <= _env_fields(agent).items()
    assert {m["mountPath"] for m in agent["volumeMounts"]} >= {
        "/run/cachelink",
        "/dev/shm/cachelink",
        "/etc/cachelink/verify",
        "/etc/cachelink/metrics",
    }
    context = agent["securityContext"]
    assert context["readOnlyRootFilesystem"] and context["runAsUser"] == 0
    assert context["privileged"] is True, "privileged: the CSI plugin"
    unprivileged = _container(by_kind(objects(helm, "csi.enabled=false"), "DaemonSet")[0])["securityContext"]
    assert (
        unprivileged["capabilities"] == {"drop": ["ALL"]}
        and unprivileged["allowPrivilegeEscalation"] is False
    )
    operator = _container(by_kind(docs, "Deployment")[0])
    assert {"--bind-address=$(POD_IP)", "--leader-duration=6"} <= set(operator["args"])
    assert _env_fields(operator)["POD_NAME"] == "metadata.name"
    pod_context = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"].get("securityContext") or {}
    assert (operator.get("securityContext") or {}).get("runAsUser", pod_context.get("runAsUser")) == 65532
    default_agent = by_kind(objects(helm), "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "--listen=$(POD_IP):8470" in default_agent["args"]
    default_operator = by_kind(objects(helm), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--bind-address") for a in default_operator["args"])
