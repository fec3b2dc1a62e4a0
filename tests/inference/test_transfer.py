"""A real model's KV cache crosses CacheLink between two processes and decode continues token for token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from inference_common import MAX_TOKENS, PROMPTS, server_args
from inference_common import call as http_call

pytestmark = [pytest.mark.inference, pytest.mark.slow]

# (cache kind, link mode, data path). Registered buffers are private memory of their process, not a
# shared-memory pool, so CacheLink moves them over TCP even on one host.
CONFIGS = [
    ("allocated", "clusters", "shm"),
    ("allocated", "clusters", "tcp"),
    ("allocated", "rank_table", "shm"),
    ("registered", "rank_table", "tcp"),
    ("registered", "clusters", "tcp"),
]
_ids = iter(range(10, 100, 2))


@pytest.fixture(scope="module", params=CONFIGS, ids=["-".join(c) for c in CONFIGS])
def pair(request, procs) -> Iterator[dict[str, Any]]:
    kind, link_mode, path = request.param
    opts = {
        "registered": kind == "registered",
        "link_mode": link_mode,
        "force_tcp": path == "tcp",
        "debug": True,
    }
    cid = next(_ids)
    prefill = procs(server_args("prefill", cid, **opts))
    decode = procs(server_args("decode", cid + 1, **opts))
    yield {"prefill": prefill, "decode": decode, "path": path}
    decode.close()  # one pair at a time: the next configuration's servers start after these stopped
    prefill.close()


def split_run(pair, prompt: str, *, tamper=None) -> tuple[dict[str, Any], dict[str, Any]]:
    status, pre = http_call(
        f"{pair['prefill'].url}/v1/completions", {"prompt": prompt, "max_tokens": MAX_TOKENS}
    )
    assert status == 200, pre
    params = dict(pre["kv_transfer_params"])
    if tamper:
        tamper(params)
    status, dec = http_call(
        f"{pair['decode'].url}/v1/completions",
        {"prompt": prompt, "max_tokens": MAX_TOKENS, "kv_transfer_params": params},
    )
    assert status == 200, dec
    return pre, dec


@pytest.mark.parametrize("name", ["short", "long"])
def test_split_equals_single_process(pair, reference, name):
    pre, dec = split_run(pair, PROMPTS[name])
    ref = reference[name]
    assert pre["prompt_token_ids"] == ref["prompt_ids"]
    assert dec["choices"][0]["token_ids"] == ref["token_ids"]
    info = dec["cachelink"]
    assert info["kv_digest"] == info["prompt_kv_digest"] == pre["kv_transfer_params"]["kv_digest"]
    assert info["data_path"] == pair["path"]
    assert info["kv_bytes"] > 0
    if name == "long":
        assert len(pre["kv_transfer_params"]["remote_block_ids"]) > 2


def test_decode_never_runs_prefill_and_prompt_frees_blocks(pair):
    _, decode_status = http_call(f"{pair['decode'].url}/v1/kv/status")
    assert decode_status["prefills"] == 0 and decode_status["prefill_tokens"] == 0
    assert decode_status["decode_steps"] > 0 and decode_status["bytes_pulled"] > 0
    _, prefill_status = http_call(f"{pair['prefill'].url}/v1/kv/status")
    assert prefill_status["prefills"] > 0 and prefill_status["decode_steps"] == 0
    assert prefill_status["held_requests"] == []  # every "finished" arrived
    assert prefill_status["free_blocks"] == prefill_status["num_blocks"]


def test_without_pull_tokens_differ(pair, reference):
    _, dec = split_run(pair, PROMPTS["long"], tamper=lambda p: p.update(skip_pull=True))
    ref = reference["long"]["token_ids"]
    got = dec["choices"][0]["token_ids"]
    assert got[0] == ref[0]  # the first token comes from the prompt side
    assert got != ref
    assert dec["cachelink"]["kv_digest"] != dec["cachelink"]["prompt_kv_digest"]


def test_wrong_block_ids_tokens_differ(pair, reference):
    # The first block pulled everywhere. (A mere permutation of whole blocks would not do: RoPE is already in
    # the cached K, and attention over the visible keys does not depend on their order.)
    def first_block_everywhere(params):
        params["remote_block_ids"] = [params["remote_block_ids"][0]] * len(params["remote_block_ids"])

    _, dec = split_run(pair, PROMPTS["long"], tamper=first_block_everywhere)
    assert dec["choices"][0]["token_ids"] != reference["long"]["token_ids"]
    assert dec["cachelink"]["kv_digest"] != dec["cachelink"]["prompt_kv_digest"]
