"""Disaggregated serving: router -> prefill server -> decode server, over real sockets and processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from inference_common import MAX_TOKENS, PROMPTS, server_args, stream_tokens
from inference_common import call as http_call

pytestmark = [pytest.mark.inference, pytest.mark.slow]
HOLD_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def servers(procs) -> Iterator[dict[str, Any]]:
    prefill = procs(server_args("prefill", 201, hold_timeout=HOLD_TIMEOUT_S))
    healthy = procs(server_args("decode", 202))
    dying = procs(server_args("decode", 203), extra_env={"CACHELINK_INFERENCE_DIE_IN_PULL": "1"})
    router = procs(["router", "--prefill", prefill.url, "--decode", healthy.url])
    router_dying = procs(["router", "--prefill", prefill.url, "--decode", dying.url, "--decode", healthy.url])
    yield {
        "prefill": prefill,
        "decode": healthy,
        "dying": dying,
        "router": router,
        "router_dying": router_dying,
    }
    for proc in (router_dying, router, dying, healthy, prefill):
        proc.close()
    # the killed decode server never finalized: its pool files would wait for the next init's sweep
    for leftover in Path("/dev/shm").glob(f"cachelink-203-{dying.proc.pid}.*"):
        leftover.unlink(missing_ok=True)


def complete(url: str, prompt: str, stream: bool) -> list[int]:
    status, body = http_call(
        f"{url}/v1/completions", {"prompt": prompt, "max_tokens": MAX_TOKENS, "stream": stream}
    )
    assert status == 200, body
    return stream_tokens(body) if stream else body["choices"][0]["token_ids"]


def test_concurrent_requests_each_equal_their_single_process_run(servers, reference):
    jobs = [(name, stream) for name in PROMPTS for stream in (True, False)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: complete(servers["router"].url, PROMPTS[job[0]], job[1]), jobs))
    for (name, _), tokens in zip(jobs, results, strict=True):
        assert tokens == reference[name]["token_ids"], name


def test_streamed_text_and_first_chunk_report(servers, reference):
    status, events = http_call(
        f"{servers['router'].url}/v1/completions",
        {"prompt": PROMPTS["long"], "max_tokens": MAX_TOKENS, "stream": True},
    )
    assert status == 200
    assert "".join(e["choices"][0]["text"] for e in events) == reference["long"]["text"]
    info = events[0]["cachelink"]
    assert info["kv_digest"] == info["prompt_kv_digest"] and info["data_path"] == "shm"


@pytest.mark.parametrize(
    ("target", "body", "raw", "status"),
    [
        ("router", None, b"not json", 400),
        ("router", {"prompt": "", "max_tokens": 4}, None, 400),
        ("prefill", {"prompt": 3}, None, 400),
        ("prefill", {"prompt": "hi", "max_tokens": 0}, None, 400),
        ("prefill", {"prompt": [2, 10**9]}, None, 400),
        ("prefill", {"prompt": "hi", "stream": "yes"}, None, 400),
        ("decode", {"prompt": "hi"}, None, 400),
        ("decode", {"prompt": "hi", "kv_transfer_params": {"request_id": "x"}}, None, 400),
        ("prefill", {"prompt": "x " * 5000}, None, 413),
        ("prefill", {"prompt": "hi", "kv_transfer_params": {"hold_timeout_s": -1}}, None, 400),
        ("prefill", {"prompt": "hi", "request_id": 7}, None, 400),
    ],
)
def test_bad_input_is_a_4xx_with_a_json_body(servers, target, body, raw, status):
    got, payload = http_call(f"{servers[target].url}/v1/completions", body, raw=raw)
    assert got == status
    assert isinstance(payload["error"]["message"], str) and payload["error"]["type"]


def test_finished_for_an_unknown_request_is_404(servers):
    status, payload = http_call(f"{servers['prefill'].url}/v1/kv/finished", {"request_id": "nobody"})
    assert status == 404 and "error" in payload


def _held(servers) -> dict[str, Any]:
    return http_call(f"{servers['prefill'].url}/v1/kv/status")[1]


def test_decode_dying_mid_pull(servers, reference):
    status, payload = http_call(
        f"{servers['router_dying'].url}/v1/completions", {"prompt": PROMPTS["long"], "max_tokens": MAX_TOKENS}
    )
    assert status == 502 and payload["error"]["type"] == "upstream_error"
    servers["dying"].proc.wait(timeout=60)
    assert not servers["dying"].alive()
    state = _held(servers)  # the router released the request's blocks on the prompt side
    assert state["held_requests"] == [] and state["free_blocks"] == state["num_blocks"]
    # the prompt server and the router keep serving (the next request goes to the healthy decode server)
    assert complete(servers["router_dying"].url, PROMPTS["long"], False) == reference["long"]["token_ids"]
    assert complete(servers["router"].url, PROMPTS["short"], True) == reference["short"]["token_ids"]


@pytest.mark.parametrize("hold", [None, 1.0], ids=["server-hold", "request-hold"])
def test_prompt_blocks_freed_when_decode_never_comes(servers, hold):
    body = {"prompt": PROMPTS["other"], "max_tokens": 4}
    if hold is not None:
        body["kv_transfer_params"] = {"do_remote_decode": True, "hold_timeout_s": hold}
    status, pre = http_call(f"{servers['prefill'].url}/v1/completions", body)
    assert status == 200
    rid = pre["kv_transfer_params"]["request_id"]
    before = _held(servers)
    assert rid in before["held_requests"]
    deadline = time.monotonic() + HOLD_TIMEOUT_S + 60  # a bound on waiting, not a timing assertion
    while rid in (state := _held(servers))["held_requests"]:
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert state["freed_by_timeout"] >= before["freed_by_timeout"] + 1
    assert state["free_blocks"] == state["num_blocks"]


def test_a_request_id_in_use_is_a_409(servers):
    url = f"{servers['prefill'].url}/v1/completions"
    assert http_call(url, {"prompt": "hi", "request_id": "dup"})[0] == 200
    status, payload = http_call(url, {"prompt": "hi", "request_id": "dup"})
    assert status == 409 and "error" in payload
    assert http_call(f"{servers['prefill'].url}/v1/kv/finished", {"request_id": "dup"})[0] == 200
    state = _held(servers)
    assert state["free_blocks"] == state["num_blocks"]


def test_decode_relinks_to_a_restarted_prefill_server(procs, reference):
    """A prompt server that restarts (same cluster id, new port) is linked again on the next request."""
    prefill = procs(server_args("prefill", 301))
    decode = procs(server_args("decode", 302))

    def split() -> list[int]:
        status, pre = http_call(
            f"{prefill.url}/v1/completions", {"prompt": PROMPTS["short"], "max_tokens": 4}
        )
        assert status == 200, pre
        body = {
            "prompt": PROMPTS["short"],
            "max_tokens": MAX_TOKENS,
            "kv_transfer_params": pre["kv_transfer_params"],
        }
        status, dec = http_call(f"{decode.url}/v1/completions", body)
        assert status == 200, dec
        return dec["choices"][0]["token_ids"]

    assert split() == reference["short"]["token_ids"]
    prefill.proc.kill()
    prefill.close()
    prefill = procs(server_args("prefill", 301))
    assert split() == reference["short"]["token_ids"]
    decode.close()
    prefill.close()
