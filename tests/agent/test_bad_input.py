"""Bad input gets a clear typed error, never a crash or a half-applied change; schemathesis finds no 5xx."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cachelink_agent import models, tokens

from .conftest import PROMPT_IP, engine_options

SPEC = {"role": "prompt", "cluster_id": 1, "owner": "uid-1"}


@pytest.fixture
def agent(agents):
    return agents("node-a", PROMPT_IP, "--in-process", "--max-body-bytes", "65536")


def put(agent, name: str, body: object) -> tuple[int, dict]:
    return agent.http("PUT", f"/v1/instances/{name}", json.dumps(body).encode())


def test_invalid_options_name_the_field(agent) -> None:
    bad_pool = engine_options(PROMPT_IP, **{"llm.MemPoolConfig": "not json"})
    status, body = put(agent, "x", {**SPEC, "options": bad_pool})
    assert status == 422 and body["error"] == "invalid_options"
    assert [f["loc"] for f in body["fields"]] == ["options.llm.MemPoolConfig"]
    status, body = put(agent, "x", {**SPEC, "options": engine_options(PROMPT_IP, **{"cachelink.nope": "1"})})
    assert status == 422 and "cachelink.nope" in body["message"]
    status, body = put(
        agent, "x", {**SPEC, "options": engine_options(PROMPT_IP, **{"cachelink.pool_dir": "/etc"})}
    )
    assert status == 422 and body["fields"][0]["loc"] == "options.cachelink.pool_dir"
    status, body = put(agent, "x", {**SPEC, "options": {"ge.exec.deviceId": 0}})
    assert status == 422 and body["fields"][0]["loc"] == "options.ge.exec.deviceId"
    status, body = put(agent, "x", {**SPEC, "role": "boss", "options": engine_options(PROMPT_IP)})
    assert status == 422 and body["fields"][0]["loc"] == "role"
    assert agent.call(lambda c: c.get_instances()) == []
    assert list(agent.pool_dir.iterdir()) == []


def test_unknown_conflict_and_replace(agent) -> None:
    status, body = agent.http("GET", "/v1/instances/ghost")
    assert status == 404 and body["error"] == "not_found"
    assert agent.http("DELETE", "/v1/instances/ghost")[0] == 404
    link = json.dumps({"remote_address": "127.0.0.9:1"}).encode()
    assert agent.http("PUT", "/v1/instances/ghost/links/1", link)[0] == 404
    assert put(agent, "x", {**SPEC, "options": engine_options(PROMPT_IP)})[0] == 201
    assert put(agent, "x", {**SPEC, "options": engine_options(PROMPT_IP)})[0] == 200
    status, body = put(agent, "x", {**SPEC, "cluster_id": 2, "options": engine_options(PROMPT_IP)})
    assert status == 409 and body["error"] == "conflict"
    assert agent.instance("x").cluster_id == 1
    status, body = put(
        agent, "x", {**SPEC, "cluster_id": 2, "options": engine_options(PROMPT_IP), "replace": True}
    )
    assert status == 200 and body["action"] == "replaced" and body["instance"]["cluster_id"] == 2


def test_link_failure_reports_the_status_code(agent) -> None:
    agent.put_instance("x", 1)
    closed_port = json.dumps({"remote_address": f"{PROMPT_IP}:1", "timeout_ms": 500}).encode()
    status, body = agent.http("PUT", "/v1/instances/x/links/7", closed_port)
    assert status == 424 and body["error"] == "link_failed" and body["llm_status"].startswith("LLM_")
    [link] = agent.instance("x").links
    assert link.state == "failed" and link.last_status == body["llm_status"]


def test_pool_budget(agents) -> None:
    agent = agents("node-b", PROMPT_IP, "--in-process")  # budget 256 MiB (conftest)
    agent.put_instance("big", 1, options=engine_options(PROMPT_IP, 200 << 20))
    status, body = put(
        agent, "more", {**SPEC, "cluster_id": 2, "options": engine_options(PROMPT_IP, 100 << 20)}
    )
    assert status == 409 and body["error"] == "pool_budget_exceeded"
    assert agent.call(lambda c: c.get_node()).pool_reserved_bytes == 200 << 20


def test_malformed_oversized_and_traversal(agent) -> None:
    status, body = agent.http("PUT", "/v1/instances/x", b"{not json")
    assert status == 400 and body["error"] == "malformed_json"
    status, body = agent.http("PUT", "/v1/instances/x", b"[]")
    assert status == 422
    huge = json.dumps({**SPEC, "options": {"k": "v" * 100_000}}).encode()
    status, body = agent.http("PUT", "/v1/instances/x", huge)
    assert status == 413 and body["error"] == "body_too_large"
    for name in ("..%2F..%2Fetc", "%2E%2E", "UPPER", "a" * 64, "x%00y"):
        status, body = agent.http("PUT", f"/v1/instances/{name}", json.dumps(SPEC).encode())
        assert status in (404, 422), name
        assert "error" in body
    status, body = agent.http("GET", "/v1/instances/..%2F..%2Fetc%2Fpasswd")
    assert status in (404, 422)
    status, body = agent.http("PUT", "/v1/instances/x/links/abc", b"{}")
    assert status == 422 and body["fields"][0]["loc"] == "path.remote_cluster_id"
    status, body = agent.http("POST", "/v1/instances", b"{}")
    assert status == 405 and body["error"] == "method_not_allowed"
    assert sorted(p.name for p in agent.root.iterdir()) == [
        "agent.log",
        "metrics-token",
        "run",
        "state",
        "verify.pem",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "nowhere"], "--listen must be host:port"),
        (["--verify-key-file", "/nonexistent/key.pem"], "--verify-key-file /nonexistent/key.pem"),
        (["--verify-key-file", "/etc/hostname"], "not a PEM public key or certificate"),
        (["--metrics-token-file", "/etc/hostname"], "the credential must be at least 32 bytes"),
        (["--node-name", "Bad_Name"], "DNS-1123"),
        (["--max-pool-bytes", "lots"], "--max-pool-bytes"),
        (["--owner-ttl", "-1"], "--owner-ttl must be a positive number"),
        (["--owner-ttl", "nan"], "--owner-ttl must be a positive number"),
        (["--lease-seconds", "inf"], "--lease-seconds must be a positive number"),
        (["--owner-ttl", "600", "--owner-finalize-ttl", "60"], "--owner-finalize-ttl must be at least"),
        (["--tls-cert", "/etc/hostname"], "--tls-cert and --tls-key go together"),
        (["--csi-socket", "csi.sock"], "--csi-socket csi.sock: needs an absolute path"),
        (["--kubelet-dir", "var/lib/kubelet"], "--kubelet-dir var/lib/kubelet: needs an absolute path"),
        (["--csi-driver-name", "Cache_Link"], "--csi-driver-name 'Cache_Link' is not a DNS-1123 subdomain"),
        (["--csi-grant-wait", "0"], "--csi-grant-wait must be a positive number"),
        (
            ["--listen", "127.0.0.2:0", "--csi-socket", "/tmp/" + "x" * 120],
            "longer than a Unix socket address",
        ),
    ],
)
def test_bad_flags_exit_with_a_message(tmp_path, argv, message) -> None:
    secret = tmp_path / "verify.pem"
    secret.write_bytes(tokens.public_pem(tokens.generate_signing_key()))
    base = [
        "--verify-key-file",
        str(secret),
        "--state-dir",
        str(tmp_path / "s"),
        "--run-dir",
        str(tmp_path / "r"),
        "--node-name",
        "n1",
    ]
    result = subprocess.run(
        [sys.executable, "-P", "-m", "cachelink_agent", *base, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_newer_state_file_is_refused(tmp_path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "state.json").write_text(json.dumps({"schema_version": 99, "instances": {}}))
    secret = tmp_path / "verify.pem"
    secret.write_bytes(tokens.public_pem(tokens.generate_signing_key()))
    result = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "cachelink_agent",
            "--verify-key-file",
            str(secret),
            "--state-dir",
            str(tmp_path / "s"),
            "--run-dir",
            str(tmp_path / "r"),
            "--node-name",
            "n1",
            "--listen",
            "127.0.0.2:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "refusing to downgrade" in result.stderr


def test_models_reject_what_the_api_rejects() -> None:
    assert models.is_instance_name("prefill-0") and not models.is_instance_name("../x")
    with pytest.raises(ValueError, match="cluster id"):
        models.CommLinkSpec(cluster_rank_info={"x": 0, "2": 1}, rank_table="{}")


def test_request_metrics_label_only_known_methods(agent) -> None:
    """A caller inventing methods must not grow the metric's series without bound."""
    invented = ("TRACE", "PROPFIND", "PURGE", "MKCOL", "LOCK")
    for method in invented:
        status, _ = agent.http(method, "/v1/instances")
        assert status == 405
    metrics = agent.call(lambda c: c.metrics())
    assert not any(f'method="{method}"' in metrics for method in invented)
    assert 'method="other"' in metrics


def test_an_unreadable_csi_volumes_file_is_refused(tmp_path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "csi-volumes.json").write_text("{not json")
    secret = tmp_path / "verify.pem"
    secret.write_bytes(tokens.public_pem(tokens.generate_signing_key()))
    argv = [
        "--verify-key-file",
        str(secret),
        "--state-dir",
        str(tmp_path / "s"),
        "--run-dir",
        str(tmp_path / "r"),
    ]
    argv += ["--node-name", "n1", "--listen", "127.0.0.2:0", "--csi-socket", str(tmp_path / "csi.sock")]
    result = subprocess.run(
        [sys.executable, "-P", "-m", "cachelink_agent", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "csi-volumes.json is unreadable" in result.stderr
    assert "Traceback" not in result.stderr
