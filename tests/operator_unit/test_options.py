"""Generated LLM-DataDist options: what LLMConfig.generate_options() writes, plus cachelink.* keys."""

from __future__ import annotations

import json

import pytest
from cachelink_operator import desired, policy
from cachelink_operator.models import Options
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_datadist import LLMConfig
from llm_datadist.ext.options import CACHELINK_OPTIONS

from .helpers import spec


def test_defaults_generate_the_documented_options():
    merged = policy.effective_options(spec(), [])
    opts = desired.engine_options(merged, listen="127.0.0.2:26000", host_id="node-a")
    assert opts == {
        "ge.exec.deviceId": "0",
        "ge.session_device_id": "0",
        "llm.SyncKvCacheWaitTime": "1000",
        "llm.MemPoolConfig": json.dumps({"memory_size": 64 << 20, "page_shift": 16}),
        "llm.EnableCacheManager": "1",
        "llm.EnableRemoteCacheAccessible": "0",
        "llm.listenIpInfo": "127.0.0.2:26000",
        "llm.LinkTotalTime": "0",
        "llm.LinkRetryCount": "1",
        "llm.MemoryUtilization": "0.95",
        "cachelink.host_id": "node-a",
    }


def test_options_match_a_hand_written_llmconfig():
    options = Options(
        device_id=3,
        sync_kv_timeout_ms=2500,
        mem_pool_size_bytes=1 << 20,
        page_shift=12,
        host_mem_pool_size_bytes=1 << 21,
        enable_remote_cache_accessible=True,
        link_total_time_seconds=30,
        link_retry_count=5,
        mem_utilization=0.5,
        rdma_traffic_class=132,
        rdma_service_level=4,
    )
    cfg = LLMConfig()
    cfg.device_id = 3
    cfg.enable_cache_manager = True
    cfg.sync_kv_timeout = 2500
    cfg.mem_pool_cfg = json.dumps({"memory_size": 1 << 20, "page_shift": 12})
    cfg.host_mem_pool_cfg = json.dumps({"memory_size": 1 << 21, "page_shift": 12})
    cfg.enable_remote_cache_accessible = True
    cfg.link_total_time = 30
    cfg.link_retry_count = 5
    cfg.mem_utilization = 0.5
    cfg.rdma_traffic_class = 132
    cfg.rdma_service_level = 4
    expected = dict(cfg.generate_options())
    got = desired.engine_options(options, listen=None, host_id="h")
    assert list(got)[: len(expected)] == list(expected)  # same keys in LLMConfig's order
    assert {k: v for k, v in got.items() if not k.startswith("cachelink.")} == expected


def test_cachelink_keys_are_known_to_the_engine():
    opts = desired.engine_options(policy.BUILTIN_DEFAULTS, listen=None, host_id="h")
    assert {k for k in opts if k.startswith("cachelink.")} <= set(CACHELINK_OPTIONS)


@settings(max_examples=40, deadline=None)
@given(
    device=st.integers(0, 2**31 - 1),
    sync=st.integers(1, 2**31 - 1),
    pool=st.integers(1024, 2**40),
    retries=st.integers(1, 100),
    total=st.integers(0, 2**32 - 1),
)
def test_every_valid_option_is_accepted_by_llmconfig(device, sync, pool, retries, total):
    options = policy.merge_options(
        Options(
            device_id=device,
            sync_kv_timeout_ms=sync,
            mem_pool_size_bytes=pool,
            link_retry_count=retries,
            link_total_time_seconds=total,
        ),
        policy.BUILTIN_DEFAULTS,
    )
    opts = desired.engine_options(options, listen=None, host_id="h")
    assert opts["ge.exec.deviceId"] == str(device)
    assert opts["llm.SyncKvCacheWaitTime"] == str(sync)
    assert json.loads(opts["llm.MemPoolConfig"])["memory_size"] == pool
    assert all(isinstance(v, str) for v in opts.values())


@pytest.mark.parametrize(
    ("interface", "cidr", "expected"),
    [
        (None, None, "127.0.0.2"),
        ("eth1", None, "10.1.0.5"),
        (None, "192.168.0.0/16", "192.168.3.4"),
        ("eth0", "10.0.0.0/8", None),
    ],
)
def test_address_selection(interface, cidr, expected):
    from .helpers import node_info

    info = node_info("node-a", ("eth0", ["192.168.3.4"]), ("eth1", ["10.1.0.5"]))
    address, problem = desired.choose_address(info, "127.0.0.2", interface, cidr)
    assert address == expected
    assert (problem is None) == (expected is not None)
