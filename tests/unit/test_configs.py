"""LLMConfig: defaults, setter validation and option generation."""

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_datadist.configs import LLMClusterInfo, LLMConfig, LlmConfig, LLMRole
from llm_datadist.status import LLMException, LLMStatusCode
from llm_datadist.v2 import llm_types


@pytest.fixture
def cfg():
    return LLMConfig()


def raises_le(message):
    """pytest.raises for LLMException(LLM_PARAM_INVALID) with an exact message."""
    return pytest.raises(LLMException, match=f"^{re.escape(message)}$")


def test_aliases_and_reexports():
    assert LlmConfig is LLMConfig
    assert LLMRole is llm_types.LLMRole
    assert LLMClusterInfo is llm_types.LLMClusterInfo
    assert LLMConfig.gen_options is LLMConfig.generate_options


def test_fresh_config_yields_only_memory_utilization(cfg):
    assert cfg.generate_options() == {"llm.MemoryUtilization": "0.95"}


def test_defaults(cfg):
    assert cfg.device_id is None
    assert cfg.sync_kv_timeout is None
    assert cfg.listen_ip_info == ""
    assert cfg.enable_cache_manager is False
    assert cfg.enable_remote_cache_accessible is False
    assert cfg.mem_pool_cfg == ""
    assert cfg.host_mem_pool_cfg == ""
    assert cfg.buf_pool_cfg == ""
    assert cfg.rdma_traffic_class is None
    assert cfg.rdma_service_level is None
    assert cfg.local_comm_res == ""
    assert cfg.transfer_backend == ""
    assert cfg.global_resource_config == ""
    assert cfg.link_total_time == 0
    assert cfg.link_retry_count == 1
    assert cfg.enable_switch_role is False
    assert cfg.mem_utilization == 0.95
    assert cfg.deploy_res_path == ""
    assert cfg.output_max_size is None
    assert cfg.cluster_info == ""
    assert cfg.ge_options == {}
    assert cfg.options == {}


def test_seed_example_init_options(cfg):
    # The calling example of LLMDataDist.init in the reference docs.
    cfg.enable_cache_manager = True
    cfg.device_id = 0
    options = cfg.generate_options()
    assert options == {
        "ge.exec.deviceId": "0",
        "ge.session_device_id": "0",
        "llm.EnableCacheManager": "1",
        "llm.MemoryUtilization": "0.95",
    }
    assert list(options) == [
        "ge.exec.deviceId",
        "ge.session_device_id",
        "llm.EnableCacheManager",
        "llm.MemoryUtilization",
    ]
    assert all(isinstance(v, str) for v in options.values())


def test_options_dict_is_stored_and_accumulates(cfg):
    first = cfg.generate_options()
    cfg.listen_ip_info = "10.0.0.1:26000"
    second = cfg.gen_options()
    assert second is first is cfg.options
    assert second["llm.listenIpInfo"] == "10.0.0.1:26000"
    cfg.listen_ip_info = ""
    cfg.enable_cache_manager = False
    third = cfg.generate_options()
    assert third["llm.listenIpInfo"] == "10.0.0.1:26000"  # never vanishes
    assert third["llm.EnableCacheManager"] == "0"
    assert list(third) == ["llm.MemoryUtilization", "llm.listenIpInfo", "llm.EnableCacheManager"]


def test_full_key_order(cfg):
    cfg.ge_options = {"ge.flowGraphMemMaxSize": "1024"}
    cfg.device_id = 1
    cfg.sync_kv_timeout = 2000
    cfg.deploy_res_path = "/res"
    cfg.buf_pool_cfg = "{}"
    cfg.mem_pool_cfg = '{"memory_size": 1024}'
    cfg.host_mem_pool_cfg = '{"memory_size": 2048}'
    cfg.enable_cache_manager = True
    cfg.enable_remote_cache_accessible = True
    cfg.listen_ip_info = "127.0.0.1:26000"
    cfg.link_total_time = 10
    cfg.link_retry_count = 3
    cfg.rdma_traffic_class = 132
    cfg.rdma_service_level = 4
    cfg.local_comm_res = ""
    cfg.transfer_backend = "hixl"
    cfg.global_resource_config = "{}"
    cfg.cluster_info = '{"cluster_id": 1}'
    cfg.output_max_size = 100
    cfg.enable_switch_role = True
    cfg.mem_utilization = 0.5
    assert list(cfg.generate_options().items()) == [
        ("ge.flowGraphMemMaxSize", "1024"),
        ("ge.exec.deviceId", "1"),
        ("ge.session_device_id", "1"),
        ("llm.SyncKvCacheWaitTime", "2000"),
        ("llm.deployResPath", "/res"),
        ("llm.BufPoolCfg", "{}"),
        ("llm.MemPoolConfig", '{"memory_size": 1024}'),
        ("llm.HostMemPoolConfig", '{"memory_size": 2048}'),
        ("llm.EnableCacheManager", "1"),
        ("llm.EnableRemoteCacheAccessible", "1"),
        ("llm.listenIpInfo", "127.0.0.1:26000"),
        ("llm.LinkTotalTime", "10"),
        ("llm.LinkRetryCount", "3"),
        ("llm.RdmaTrafficClass", "132"),
        ("llm.RdmaServiceLevel", "4"),
        ("llm.LocalCommRes", ""),
        ("llm.TransferBackend", "hixl"),
        ("llm.GlobalResourceConfig", "{}"),
        ("llm.ClusterInfo", '{"cluster_id": 1}'),
        ("llm.OutputMaxSize", "100"),
        ("llm.EnableSwitchRole", "1"),
        ("llm.MemoryUtilization", "0.5"),
    ]


def test_named_properties_override_ge_options(cfg):
    cfg.ge_options = {"ge.exec.deviceId": "7", "x": "y"}
    cfg.device_id = 2
    options = cfg.generate_options()
    assert options["ge.exec.deviceId"] == "2"
    assert options["x"] == "y"


# ---- device_id -----------------------------------------------------------------------------


def test_device_id_list_and_tuple(cfg):
    cfg.device_id = [0, 1]
    assert cfg.device_id == [0, 1]
    options = cfg.gen_options()
    assert options["ge.exec.deviceId"] == "0;1"
    assert options["ge.session_device_id"] == "0"
    assert list(options)[:2] == ["ge.session_device_id", "ge.exec.deviceId"]
    cfg.device_id = (3, 4)
    assert cfg.device_id == (3, 4)
    assert cfg.gen_options()["ge.exec.deviceId"] == "3;4"


def test_device_id_errors(cfg):
    with raises_le("device_id should be greater than or equal to zero.") as info:
        cfg.device_id = -1
    assert info.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
    with raises_le("device_id should be greater than or equal to zero."):
        cfg.device_id = [0, -1]
    with pytest.raises(
        ValueError, match=r"^device_id's value is out of range,2147483648 is not a int32 value\.$"
    ):
        cfg.device_id = 2**31
    with pytest.raises(
        ValueError, match=r"^device_id's value is out of range,2147483648 is not a int32 value\.$"
    ):
        cfg.device_id = [0, 2**31]
    with pytest.raises(
        TypeError, match=re.escape("device_id only support ['list', 'tuple', 'int'], but got <class 'str'>.")
    ):
        cfg.device_id = "0"
    with pytest.raises(TypeError):
        cfg.device_id = True
    with pytest.raises(TypeError):
        cfg.device_id = None
    with pytest.raises(
        TypeError,
        match=re.escape("device_id inner type only support [<class 'int'>], but got <class 'str'>."),
    ):
        cfg.device_id = [0, "1"]
    assert cfg.device_id is None


@given(st.integers(min_value=0, max_value=2**31 - 1))
def test_device_id_any_valid_int32(device_id):
    cfg = LLMConfig()
    cfg.device_id = device_id
    assert cfg.generate_options()["ge.exec.deviceId"] == str(device_id)


# ---- sync_kv_timeout ------------------------------------------------------------------------


def test_sync_kv_timeout(cfg):
    cfg.sync_kv_timeout = "1500"
    assert cfg.sync_kv_timeout == "1500"
    assert cfg.generate_options()["llm.SyncKvCacheWaitTime"] == "1500"
    cfg.sync_kv_timeout = 3000
    assert cfg.generate_options()["llm.SyncKvCacheWaitTime"] == "3000"
    with raises_le("sync_kv_timeout must be digit."):
        cfg.sync_kv_timeout = "10ms"
    with raises_le("sync_kv_timeout must be digit."):
        cfg.sync_kv_timeout = "-1"
    with raises_le("sync_kv_timeout should be greater than zero."):
        cfg.sync_kv_timeout = 0
    with raises_le("sync_kv_timeout should be greater than zero."):
        cfg.sync_kv_timeout = "0"
    with pytest.raises(ValueError, match="not a int32 value"):
        cfg.sync_kv_timeout = 2**31
    with pytest.raises(
        TypeError, match=re.escape("sync_kv_timeout only support ['int', 'str'], but got <class 'float'>.")
    ):
        cfg.sync_kv_timeout = 1.5


# ---- flags and strings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prop", "key"),
    [
        ("enable_cache_manager", "llm.EnableCacheManager"),
        ("enable_remote_cache_accessible", "llm.EnableRemoteCacheAccessible"),
    ],
)
def test_bool_flags_written_once_set(cfg, prop, key):
    assert key not in cfg.generate_options()
    setattr(cfg, prop, False)
    assert cfg.generate_options()[key] == "0"
    assert getattr(cfg, prop) is False
    setattr(cfg, prop, True)
    assert cfg.generate_options()[key] == "1"
    assert getattr(cfg, prop) is True
    with pytest.raises(TypeError, match=re.escape(f"{prop} only support ['bool'], but got <class 'int'>.")):
        setattr(cfg, prop, 1)


def test_enable_switch_role_only_when_true(cfg):
    cfg.enable_switch_role = False
    assert "llm.EnableSwitchRole" not in cfg.generate_options()
    cfg.enable_switch_role = True
    assert cfg.generate_options()["llm.EnableSwitchRole"] == "1"
    with pytest.raises(TypeError):
        cfg.enable_switch_role = "1"


@pytest.mark.parametrize(
    ("prop", "key"),
    [
        ("listen_ip_info", "llm.listenIpInfo"),
        ("mem_pool_cfg", "llm.MemPoolConfig"),
        ("host_mem_pool_cfg", "llm.HostMemPoolConfig"),
        ("buf_pool_cfg", "llm.BufPoolCfg"),
        ("deploy_res_path", "llm.deployResPath"),
    ],
)
def test_strings_written_only_if_non_empty(cfg, prop, key):
    setattr(cfg, prop, "")
    assert key not in cfg.generate_options()
    setattr(cfg, prop, "value")
    assert getattr(cfg, prop) == "value"
    assert cfg.generate_options()[key] == "value"
    with pytest.raises(TypeError, match=re.escape(f"{prop} only support ['str'], but got <class 'int'>.")):
        setattr(cfg, prop, 1)


@pytest.mark.parametrize(
    ("prop", "key"),
    [
        ("local_comm_res", "llm.LocalCommRes"),
        ("transfer_backend", "llm.TransferBackend"),
        ("global_resource_config", "llm.GlobalResourceConfig"),
    ],
)
def test_strings_written_once_set_even_empty(cfg, prop, key):
    assert key not in cfg.generate_options()
    setattr(cfg, prop, "")
    assert cfg.generate_options()[key] == ""
    setattr(cfg, prop, '{"version": "1.3"}')
    assert getattr(cfg, prop) == '{"version": "1.3"}'
    assert cfg.generate_options()[key] == '{"version": "1.3"}'
    for bad in (123, {"k": "v"}, [1, 2]):
        with pytest.raises(TypeError):
            setattr(cfg, prop, bad)


# ---- numeric ranges ------------------------------------------------------------------------


def test_mem_utilization(cfg):
    for value in (0.0, 0.5, 1.0):
        cfg.mem_utilization = value
        assert cfg.mem_utilization == value
    assert cfg.generate_options()["llm.MemoryUtilization"] == "1.0"
    with raises_le("mem_utilization must be in range [0,1], current:1.5"):
        cfg.mem_utilization = 1.5
    with raises_le("mem_utilization must be in range [0,1], current:-0.1"):
        cfg.mem_utilization = -0.1
    with pytest.raises(
        TypeError, match=re.escape("mem_utilization only support ['float'], but got <class 'int'>.")
    ):
        cfg.mem_utilization = 1


def test_link_total_time(cfg):
    cfg.link_total_time = 0
    assert cfg.generate_options()["llm.LinkTotalTime"] == "0"
    cfg.link_total_time = 2**32 - 1
    assert cfg.link_total_time == 2**32 - 1
    for bad in (-1, 2**32):
        with raises_le(f"link_total_time should be an integer between [0, 2^32-1], given value is {bad}"):
            cfg.link_total_time = bad
    with pytest.raises(TypeError):
        cfg.link_total_time = "5"


def test_link_retry_count(cfg):
    assert "llm.LinkRetryCount" not in cfg.generate_options()
    cfg.link_retry_count = 100
    assert cfg.generate_options()["llm.LinkRetryCount"] == "100"
    for bad in (0, 101):
        with raises_le(f"link_retry_count should be an integer between [1, 100], given value is {bad}"):
            cfg.link_retry_count = bad
    with pytest.raises(TypeError):
        cfg.link_retry_count = 1.0


@pytest.mark.parametrize(
    ("prop", "key"),
    [("rdma_traffic_class", "llm.RdmaTrafficClass"), ("rdma_service_level", "llm.RdmaServiceLevel")],
)
def test_rdma_uint32(cfg, prop, key):
    setattr(cfg, prop, 0)
    assert cfg.generate_options()[key] == "0"
    setattr(cfg, prop, 2**32 - 1)
    assert getattr(cfg, prop) == 2**32 - 1
    for bad in (-1, 2**32):
        with pytest.raises(
            ValueError, match=f"^{prop}'s value is out of range,{bad} is not a uint32 value\\.$"
        ):
            setattr(cfg, prop, bad)
    with pytest.raises(TypeError):
        setattr(cfg, prop, "4")


def test_output_max_size(cfg):
    cfg.output_max_size = 1024
    assert cfg.generate_options()["llm.OutputMaxSize"] == "1024"
    with pytest.raises(TypeError):
        cfg.output_max_size = "1024"


# ---- dict / json -----------------------------------------------------------------------------


def test_ge_options(cfg):
    cfg.ge_options = {"ge.flowGraphMemMaxSize": "1024"}
    assert cfg.ge_options == {"ge.flowGraphMemMaxSize": "1024"}
    with pytest.raises(
        TypeError, match=re.escape("ge_options only support ['dict'], but got <class 'list'>.")
    ):
        cfg.ge_options = [("a", "b")]
    with pytest.raises(
        TypeError, match=re.escape("ge_options dict key only support <class 'str'>, but got <class 'int'>.")
    ):
        cfg.ge_options = {1: "a"}
    with pytest.raises(
        TypeError, match=re.escape("ge_options dict value only support <class 'str'>, but got <class 'int'>.")
    ):
        cfg.ge_options = {"a": 1}


def test_cluster_info_converts_listen_ips(cfg):
    cfg.cluster_info = json.dumps(
        {"cluster_id": 0, "listen_ip_info": [{"ip": "192.168.1.2", "port": 26000}, {"ip": 5}]}
    )
    parsed = json.loads(cfg.cluster_info)
    assert parsed["listen_ip_info"][0] == {"ip": 0x0201A8C0, "port": 26000}
    assert parsed["listen_ip_info"][1] == {"ip": 5}
    assert cfg.generate_options()["llm.ClusterInfo"] == cfg.cluster_info
    with pytest.raises(TypeError):
        cfg.cluster_info = {"cluster_id": 0}
