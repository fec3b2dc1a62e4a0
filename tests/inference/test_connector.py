"""The connector's bookkeeping without a model: transfer parameters, holds and their timeout, loads."""

from __future__ import annotations

import json

import pytest
from cachelink_inference.connector import KVTransferParams, SchedulerConnector, rank_table
from cachelink_inference.engine import BlockAllocator, OutOfBlocks, blocks_needed

pytestmark = [pytest.mark.inference]

PARAMS = {
    "request_id": "r1",
    "remote_cluster_id": 1,
    "remote_host": "127.0.0.1",
    "remote_port": 26000,
    "remote_block_ids": [7, 3],
    "num_tokens": 20,
}


def test_transfer_params_round_trip():
    params = KVTransferParams.from_dict(PARAMS)
    assert KVTransferParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {k: v for k, v in PARAMS.items() if k != "remote_block_ids"},
        {**PARAMS, "remote_block_ids": "7,3"},
        {**PARAMS, "remote_block_ids": [True]},
        {**PARAMS, "remote_block_ids": [-1]},
        {**PARAMS, "remote_block_ids": []},
        {**PARAMS, "num_tokens": 0},
        {**PARAMS, "remote_port": "x"},
    ],
)
def test_transfer_params_rejects_bad_input(bad):
    with pytest.raises(ValueError, match=r"kv_transfer_params|remote_block_ids"):
        KVTransferParams.from_dict(bad)


def test_decode_scheduler_side_builds_one_load_per_request():
    sched = SchedulerConnector("decode", cluster_id=2)
    params = KVTransferParams.from_dict(PARAMS)
    assert sched.get_num_new_matched_tokens("r1", 0, params) == (20, True)
    assert sched.get_num_new_matched_tokens("r2", 0, None) == (0, False)
    sched.update_state_after_alloc("r1", [40, 41, 42], 20)
    meta = sched.build_connector_meta()
    assert [(ld.request_id, ld.local_block_ids, ld.params.remote_block_ids) for ld in meta.loads] == [
        ("r1", [40, 41], [7, 3])
    ]
    assert sched.build_connector_meta().loads == []


def test_decode_scheduler_refuses_too_few_blocks():
    sched = SchedulerConnector("decode", cluster_id=2)
    sched.get_num_new_matched_tokens("r1", 0, KVTransferParams.from_dict(PARAMS))
    with pytest.raises(ValueError, match="blocks"):
        sched.update_state_after_alloc("r1", [40], 20)


def test_prompt_holds_blocks_until_finished_or_timeout():
    now = [100.0]
    sched = SchedulerConnector(
        "prompt", cluster_id=1, host="h", port=9, hold_timeout_s=5, clock=lambda: now[0]
    )
    delay, params = sched.request_finished("a", [1, 2], 20, kv_digest="d", first_token=5)
    assert delay is True and params is not None
    assert params["remote_block_ids"] == [1, 2] and params["first_token"] == 5
    sched.request_finished("b", [3], 4)
    assert sched.finished_by_peer("a") == [1, 2]
    assert sched.finished_by_peer("a") is None  # reported once
    assert sched.expired() == {}
    now[0] += 5
    assert sched.expired() == {"b": [3]}
    assert sched.held == {}


def test_rank_table_lists_ranks_in_order():
    table = json.loads(rank_table([(1, "10.0.0.1", 16000), (2, "10.0.0.2", 16001)]))
    devices = [s["device"][0] for s in table["server_list"]]
    assert [d["rank_id"] for d in devices] == ["0", "1"]
    assert devices[1]["device_port"] == "16001" and table["server_count"] == "2"


def test_block_allocator():
    alloc = BlockAllocator(4)
    got = alloc.allocate(3)
    assert sorted(got) == [1, 2, 3] and alloc.free_count == 1
    with pytest.raises(OutOfBlocks):
        alloc.allocate(2)
    alloc.free(got)
    assert alloc.free_count == 4
    assert blocks_needed(16, 16) == 1 and blocks_needed(17, 16) == 2 and blocks_needed(0, 16) == 1


def test_prompt_hold_per_request_is_capped_and_ids_are_unique():
    now = [0.0]
    sched = SchedulerConnector("prompt", cluster_id=1, hold_timeout_s=5, clock=lambda: now[0])
    sched.request_finished("short", [1], 4, hold_timeout_s=1)
    sched.request_finished("long", [2], 4, hold_timeout_s=60)  # capped at the connector's 5 s
    with pytest.raises(ValueError, match="already holds"):
        sched.request_finished("short", [3], 4)
    now[0] = 1
    assert sched.expired() == {"short": [1]}
    now[0] = 5
    assert sched.expired() == {"long": [2]}


class _FakeCacheManager:
    def __init__(self) -> None:
        self.pulls: list[tuple[int, list[int], list[int]]] = []

    def pull_blocks(self, key, cache, src, dst):
        self.pulls.append((key.cluster_id, list(src), list(dst)))


class _FakeKV:
    cache = object()
    block_bytes = 100


def test_external_links_only_pull():
    """On Kubernetes the operator links: the worker side is given a cache manager and never links."""
    from cachelink_inference.connector import LINK_EXTERNAL, WorkerConnector

    cm = _FakeCacheManager()
    worker = WorkerConnector(None, cluster_id=2, link_mode=LINK_EXTERNAL, cache_manager=cm)
    worker.register_kv_caches(_FakeKV())
    sched = SchedulerConnector("decode", cluster_id=2)
    sched.get_num_new_matched_tokens("r1", 0, KVTransferParams.from_dict(PARAMS))
    sched.update_state_after_alloc("r1", [9, 8, 7], 20)
    worker.start_load_kv(sched.build_connector_meta())
    assert cm.pulls == [(1, [7, 3], [9, 8])]
    assert worker.get_finished() == (set(), {"r1"}) and worker.bytes_pulled == 200
    with pytest.raises(ValueError, match="cache_manager"):
        WorkerConnector(None, cluster_id=2)
