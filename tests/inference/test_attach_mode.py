"""The servers as pods run them: each attached to a node agent's instance (as through a CSI volume), the link
made by the agents' API (as the operator makes it), the servers only pulling; tokens equal the
single-process run, and the decode side never runs prefill."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cachelink_agent import models
from cachelink_inference.runtime import single_thread_env
from inference_common import MAX_TOKENS, PROMPTS, stream_tokens
from inference_common import call as http_call

pytestmark = [pytest.mark.inference, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location(
    "agent_support", Path(__file__).parents[1] / "agent" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
agent_support = importlib.util.module_from_spec(_spec)
sys.modules["agent_support"] = agent_support
_spec.loader.exec_module(agent_support)

NUM_BLOCKS, BLOCK_SIZE = 64, 16
#: K and V of 18 layers, blocks of 16 tokens x 256 float32, plus the pool's own bookkeeping
POOL_BYTES = 2 * 18 * NUM_BLOCKS * BLOCK_SIZE * 256 * 4 + (8 << 20)


def _server(role: str, agent: Any) -> list[str]:
    return [role, "--attach-dir", str(agent.run_dir), "--num-blocks", str(NUM_BLOCKS)]


@pytest.fixture(scope="module")
def attached(procs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("agents")
    agents = []
    for node, ip in (("node-a", agent_support.PROMPT_IP), ("node-b", agent_support.DECODE_IP)):
        (root / node).mkdir()
        agents.append(agent_support.Agent(root / node, node, ip, ["--in-process"]))
    try:
        prompt_agent, decode_agent = (agent.start() for agent in agents)
        made = prompt_agent.put_instance(
            "prefill",
            31,
            role="prompt",
            options=agent_support.engine_options(agent_support.PROMPT_IP, POOL_BYTES),
        )
        decode_agent.put_instance(
            "decode",
            32,
            role="decoder",
            options=agent_support.engine_options(agent_support.DECODE_IP, POOL_BYTES),
        )
        assert made.instance is not None
        link = models.LinkSpec(remote_address=made.instance.listen_address, timeout_ms=5000)
        linked = decode_agent.call(lambda c: c.put_link("decode", 31, link))
        assert linked.link is not None and linked.link.state == "linked"
        prefill = procs(_server("prefill", prompt_agent))
        decode = procs(_server("decode", decode_agent))
        router = procs(["router", "--prefill", prefill.url, "--decode", decode.url])
        yield {"prefill": prefill, "decode": decode, "router": router, "decode_agent": decode_agent}
        for proc in (router, decode, prefill):
            proc.close()
    finally:
        for agent in agents:
            agent.cleanup()


def test_attached_servers_continue_token_for_token(attached, reference) -> None:
    for name in ("short", "long"):
        status, events = http_call(
            f"{attached['router'].url}/v1/completions",
            {"prompt": PROMPTS[name], "max_tokens": MAX_TOKENS, "stream": True},
        )
        assert status == 200, events
        assert stream_tokens(events) == reference[name]["token_ids"], name
        info = events[0]["cachelink"]
        assert info["kv_digest"] == info["prompt_kv_digest"] and info["kv_bytes"] > 0
        assert info["data_path"] == "external"  # the agents' link, not one of the server's own
    # the servers took their cluster ids from the instances they attached to; decode never ran prefill
    status, decode = http_call(f"{attached['decode'].url}/v1/kv/status")
    assert status == 200 and decode["cluster_id"] == 32 and decode["prefills"] == 0, decode
    status, prefill = http_call(f"{attached['prefill'].url}/v1/kv/status")
    assert status == 200 and prefill["cluster_id"] == 31 and prefill["prefills"] >= 2, prefill


def test_the_agent_sees_the_servers_caches_and_their_transfers(attached) -> None:
    (instance,) = [
        i for i in attached["decode_agent"].call(lambda c: c.get_instances()) if i.name == "decode"
    ]
    assert instance.attach_sessions >= 1 and instance.caches >= 1, instance
    metrics = attached["decode_agent"].call(lambda c: c.metrics())
    assert 'cachelink_agent_transfers_total{direction="pull"}' in metrics


def _attach_refused(tmp_path: Path, *extra: str) -> str:
    """Run a decode server that must fail to attach in ``tmp_path``; returns its stderr."""
    done = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "cachelink_inference",
            "decode",
            "--attach-dir",
            str(tmp_path),
            "--attach-timeout",
            "0.5",
            *extra,
        ],
        env=single_thread_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "", "a server that cannot attach never says it is ready"
    return done.stderr


def test_a_server_that_cannot_attach_says_why_and_what_to_pass(tmp_path: Path) -> None:
    assert "no instance socket in" in _attach_refused(tmp_path)
    assert "has no socket" in _attach_refused(tmp_path, "--instance", "prefill")
    with socket.socket(socket.AF_UNIX) as first, socket.socket(socket.AF_UNIX) as second:
        first.bind(str(tmp_path / "one.sock"))
        second.bind(str(tmp_path / "two.sock"))  # bound, never listening: a refused connection
        assert "holds 2 instances (one, two); pick one with --instance" in _attach_refused(tmp_path)
        assert "cannot attach to instance 'one'" in _attach_refused(tmp_path, "--instance", "one")
