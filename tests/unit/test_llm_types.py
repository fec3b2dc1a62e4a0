"""Enums, descriptors, keys, caches and transfer configs of llm_datadist.v2.llm_types."""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_datadist.data_type import DataType, itemsize, numpy_dtype
from llm_datadist.status import LLMException, LLMStatusCode
from llm_datadist.v2.llm_types import (
    INVALID_ID,
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    CacheTask,
    KvCache,
    LayerSynchronizer,
    LLMClusterInfo,
    LLMRole,
    MemInfo,
    Memtype,
    Placement,
    RegisterMemStatus,
    TransferConfig,
    TransferWithCacheKeyConfig,
    ip_str_to_int,
    register_mem_status_from_int,
)

UINT64 = st.integers(min_value=0, max_value=2**64 - 1)


def raises_le(message):
    return pytest.raises(LLMException, match=f"^{re.escape(message)}$")


def raises_range(name, value, width):
    """pytest.raises for the exact integer-width ValueError."""
    message = f"{name}'s value is out of range,{value} is not a {width} value."
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


# ---- enums ---------------------------------------------------------------------------------


def test_llm_role():
    assert [(r.name, r.value) for r in LLMRole] == [("PROMPT", 1), ("DECODER", 2), ("MIX", 3)]
    assert str(LLMRole.PROMPT) == "LLMRole.PROMPT"
    assert f"{LLMRole.DECODER}" == "LLMRole.DECODER"
    assert LLMRole.MIX == 3


def test_small_enums():
    assert [(p.name, p.value) for p in Placement] == [("HOST", 0), ("DEVICE", 1)]
    assert str(Placement.DEVICE) == "Placement.DEVICE"
    assert [(m.name, m.value) for m in Memtype] == [("MEM_TYPE_DEVICE", 0), ("MEM_TYPE_HOST", 1)]
    assert [(s.name, s.value) for s in RegisterMemStatus] == [("OK", 0), ("PREPARING", 1), ("FAILED", 2)]
    assert register_mem_status_from_int(0) is RegisterMemStatus.OK
    assert register_mem_status_from_int(1) is RegisterMemStatus.PREPARING
    assert register_mem_status_from_int(7) is RegisterMemStatus.FAILED


def test_data_type_values_and_helpers():
    expected = {
        "DT_FLOAT": 0, "DT_FLOAT16": 1, "DT_INT8": 2, "DT_INT32": 3, "DT_UINT8": 4, "DT_INT16": 6,
        "DT_UINT16": 7, "DT_UINT32": 8, "DT_INT64": 9, "DT_UINT64": 10, "DT_DOUBLE": 11, "DT_BOOL": 12,
        "DT_STRING": 13, "DT_BF16": 27,
    }  # fmt: skip
    assert {d.name: d.value for d in DataType} == expected
    assert str(DataType.DT_FLOAT16) == "DataType.DT_FLOAT16"
    for dt in DataType:
        if dt is DataType.DT_STRING:
            with pytest.raises(LLMException) as info:
                itemsize(dt)
            assert info.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
            with pytest.raises(LLMException):
                numpy_dtype(dt)
        else:
            assert numpy_dtype(dt).itemsize == itemsize(dt)
    assert numpy_dtype(DataType.DT_BOOL) == np.dtype(np.bool_)
    assert numpy_dtype(DataType.DT_FLOAT16) == np.dtype(np.float16)
    assert numpy_dtype(DataType.DT_BF16).itemsize == 2


# ---- LLMClusterInfo ---------------------------------------------------------------------------


def test_cluster_info():
    info = LLMClusterInfo()
    assert info.remote_cluster_id is None
    assert info.remote_role_type is None
    assert info.local_ip_info_list == []
    assert info.remote_ip_info_list == []
    info.remote_cluster_id = 2**64 - 1
    info.remote_role_type = LLMRole.PROMPT
    info.remote_role_type = 2
    info.append_local_ip_info("192.168.1.2", 26000)
    info.append_remote_ip_info(0x0100007F, 0)
    assert info.local_ip_info_list == [(0x0201A8C0, 26000)]
    assert info.remote_ip_info_list == [(0x0100007F, 0)]


def test_cluster_info_errors():
    info = LLMClusterInfo()
    with raises_range("remote_cluster_id", -1, "uint64"):
        info.remote_cluster_id = -1
    with pytest.raises(TypeError):
        info.remote_cluster_id = "1"
    with pytest.raises(TypeError):
        info.remote_role_type = "PROMPT"
    with pytest.raises(RuntimeError, match=r"^Can not parse ip str:300\.1\.1\.1$"):
        info.append_local_ip_info("300.1.1.1", 1)
    with pytest.raises(
        TypeError, match=re.escape("ip only support ['str', 'int'], but got <class 'float'>.")
    ):
        info.append_remote_ip_info(1.0, 1)
    with raises_range("port", 65536, "uint16"):
        info.append_local_ip_info("1.2.3.4", 65536)
    assert info.local_ip_info_list == []


def test_ip_str_to_int_little_endian():
    assert ip_str_to_int("192.168.1.2") == 0x0201A8C0
    assert ip_str_to_int("127.0.0.1") == 0x0100007F
    assert ip_str_to_int(42) == 42


# ---- MemInfo ---------------------------------------------------------------------------------


def test_mem_info():
    mem = MemInfo(Memtype.MEM_TYPE_DEVICE, 0x1000, 4096)
    assert (mem.mem_type, mem.addr, mem.size) == (Memtype.MEM_TYPE_DEVICE, 0x1000, 4096)
    assert str(mem) == "MemInfo(mem_type=Memtype.MEM_TYPE_DEVICE, addr=4096, size=4096)"
    assert mem == MemInfo(Memtype.MEM_TYPE_DEVICE, 0x1000, 4096)
    assert len({mem, MemInfo(Memtype.MEM_TYPE_DEVICE, 0x1000, 4096)}) == 1
    with pytest.raises(
        TypeError, match=re.escape("mem_type only support ['Memtype'], but got <class 'int'>.")
    ):
        MemInfo(0, 1, 1)
    with pytest.raises(TypeError):
        MemInfo(Memtype.MEM_TYPE_HOST, "1", 1)
    with pytest.raises(TypeError):
        MemInfo(Memtype.MEM_TYPE_HOST, 1, 1.0)


# ---- CacheDesc ---------------------------------------------------------------------------------


def test_cache_desc_defaults_and_properties():
    shape = [4, 16, 8]
    desc = CacheDesc(6, shape, DataType.DT_FLOAT16)
    assert desc.num_tensors == 6
    assert desc.shape is shape
    assert desc.data_type is DataType.DT_FLOAT16
    assert desc.placement is Placement.DEVICE
    assert desc.batch_dim == 0
    assert desc.batch_size == 4
    assert desc.seq_len_dim_index == -1
    assert desc.kv_tensor_format is None
    assert desc.size == 4 * 16 * 8 * 2
    assert desc.numpy_dtype == np.dtype(np.float16)
    assert not hasattr(desc, "batch_dim_index")
    desc.update_dim(0, 2)
    assert shape == [2, 16, 8]
    assert desc.size == 2 * 16 * 8 * 2
    assert desc.batch_size == 2


def test_cache_desc_all_arguments():
    desc = CacheDesc(2, (3, 5), DataType.DT_INT64, Placement.HOST, 1, 0, "ND")
    assert desc.batch_dim == 1
    assert desc.batch_size == 5
    assert desc.seq_len_dim_index == 0
    assert desc.kv_tensor_format == "ND"
    assert desc.placement is Placement.HOST
    assert desc.size == 15 * 8
    assert CacheDesc(0, [1], DataType.DT_INT8).num_tensors == 0
    assert repr(desc) == (
        "CacheDesc(num_tensors=2, shape=(3, 5), data_type=DataType.DT_INT64, placement=Placement.HOST, "
        "batch_dim_index=1, seq_len_dim_index=0, kv_tensor_format=ND)"
    )


def test_cache_desc_errors():
    with raises_range("num_tensors", -1, "uint32"):
        CacheDesc(-1, [1], DataType.DT_INT8)
    with raises_range("num_tensors", 2**32, "uint32"):
        CacheDesc(2**32, [1], DataType.DT_INT8)
    with pytest.raises(
        TypeError, match=re.escape("shape only support ['tuple', 'list'], but got <class 'str'>.")
    ):
        CacheDesc(1, "12", DataType.DT_INT8)
    with pytest.raises(TypeError, match="shape inner type only support"):
        CacheDesc(1, [1, 2.0], DataType.DT_INT8)
    with pytest.raises(
        TypeError, match=re.escape("data_type only support ['DataType'], but got <class 'int'>.")
    ):
        CacheDesc(1, [1], 1)
    with pytest.raises(
        TypeError, match=re.escape("placement only support ['Placement'], but got <class 'int'>.")
    ):
        CacheDesc(1, [1], DataType.DT_INT8, 1)
    with pytest.raises(TypeError):
        CacheDesc(1, [1], DataType.DT_INT8, Placement.HOST, kv_tensor_format=1)
    with raises_le("batch_dim_index 2 out of range, [0, 2)"):
        CacheDesc(1, [1, 2], DataType.DT_INT8, Placement.DEVICE, 2)
    with raises_le("batch_dim_index 0 out of range, [0, 0)"):
        CacheDesc(1, [], DataType.DT_INT8)
    with raises_le("seq_len_dim_index 5 is invalid, should be -1 or in range [0, 2)"):
        CacheDesc(1, [1, 2], DataType.DT_INT8, Placement.DEVICE, 0, 5)
    with pytest.raises(ValueError, match="shape's value is out of range"):
        CacheDesc(1, [2**63], DataType.DT_INT8)


def test_cache_desc_size_errors():
    with raises_le("Failed to calc tensor size, shape = [2, -1], data_type = DataType.DT_INT8"):
        _ = CacheDesc(1, [2, -1], DataType.DT_INT8).size
    with pytest.raises(LLMException, match="Failed to calc tensor size"):
        _ = CacheDesc(1, [2], DataType.DT_STRING).size


# ---- keys ----------------------------------------------------------------------------------------


def test_cache_key_forms():
    key = CacheKey(1, 2)
    assert (key.cluster_id, key.prompt_cluster_id, key.req_id, key.model_id, key.prefix_id) == (
        1,
        1,
        2,
        0,
        INVALID_ID,
    )
    assert CacheKey.INVALID_ID == 2**64 - 1
    assert CacheKey(1, 2, 3, 4).prefix_id == 4
    assert CacheKey(prompt_cluster_id=1, req_id=2) == key
    assert CacheKey(cluster_id=1, req_id=2, model_id=0) == key
    assert CacheKey(1, req_id=2, prefix_id=9).prefix_id == 9
    assert repr(key) == f"CacheKey(cluster_id=1, req_id=2, prefix_id={INVALID_ID}, model_id=0)"
    assert {key: "a"}[CacheKey(1, 2)] == "a"
    assert key != CacheKey(1, 3)
    assert key != BlocksCacheKey(1)


def test_cache_key_errors():
    with raises_le("Param num is over limit"):
        CacheKey(1, 2, 3, 4, 5)
    with raises_le("Param num is over limit"):
        CacheKey(1, 2, 3, 4, prefix_id=5)
    with raises_le("Param prompt_cluster_id or cluster_id is required"):
        CacheKey(req_id=1)
    with raises_le("Param req_id is required"):
        CacheKey(1)
    with raises_le("Unsupported param:batch"):
        CacheKey(1, 2, batch=3)
    with raises_range("req_id", -1, "uint64"):
        CacheKey(1, -1)
    with pytest.raises(ValueError, match="cluster_id's value is out of range"):
        CacheKey(prompt_cluster_id=2**64, req_id=1)
    with pytest.raises(TypeError, match=re.escape("model_id only support ['int'], but got <class 'str'>.")):
        CacheKey(1, 2, "3")
    with pytest.raises(TypeError):
        CacheKey(True, 2)


@given(UINT64, UINT64, UINT64, UINT64)
def test_cache_key_round_trips(cluster_id, req_id, model_id, prefix_id):
    key = CacheKey(cluster_id, req_id, model_id, prefix_id)
    assert (key.cluster_id, key.req_id, key.model_id, key.prefix_id) == (
        cluster_id,
        req_id,
        model_id,
        prefix_id,
    )
    same = CacheKey(prompt_cluster_id=cluster_id, req_id=req_id, model_id=model_id, prefix_id=prefix_id)
    assert same == key
    assert hash(same) == hash(key)


def test_blocks_cache_key():
    key = BlocksCacheKey(1)
    assert (key.cluster_id, key.prompt_cluster_id, key.model_id) == (1, 1, 0)
    assert BlocksCacheKey(1, 2).model_id == 2
    assert BlocksCacheKey(prompt_cluster_id=1) == key
    assert (
        repr(BlocksCacheKey(prompt_cluster_id=1, model_id=3))
        == "BlocksCacheKey(prompt_cluster_id=1, model_id=3)"
    )
    assert repr(key) == "BlocksCacheKey(cluster_id=1, model_id=0)"
    assert BlocksCacheKey(-5).cluster_id == -5  # type check only, no range check
    assert len({key, BlocksCacheKey(cluster_id=1, model_id=0)}) == 1


def test_blocks_cache_key_errors():
    with raises_le("Param num is over limit"):
        BlocksCacheKey(1, 2, 3)
    with raises_le("Param prompt_cluster_id or cluster_id is required"):
        BlocksCacheKey(model_id=1)
    with raises_le("Unsupported param:req_id"):
        BlocksCacheKey(1, req_id=1)
    with pytest.raises(
        TypeError, match=re.escape("The first param cluster_id only support ['int'], but got <class 'str'>.")
    ):
        BlocksCacheKey("1")
    with pytest.raises(
        TypeError, match=re.escape("The second param model_id only support ['int'], but got <class 'float'>.")
    ):
        BlocksCacheKey(1, 1.0)


def test_cache_key_by_id_and_index():
    key = CacheKeyByIdAndIndex(1, 2)
    assert (key.cluster_id, key.cache_id, key.batch_index) == (1, 2, 0)
    assert CacheKeyByIdAndIndex(cluster_id=1, cache_id=-1, batch_index=3).batch_index == 3
    assert key == CacheKeyByIdAndIndex(1, 2, 0)
    assert repr(key) == "CacheKeyByIdAndIndex(cluster_id=1, cache_id=2, batch_index=0)"
    with pytest.raises(ValueError, match="not a uint64 value"):
        CacheKeyByIdAndIndex(-1, 2)
    with pytest.raises(ValueError, match="not a int64 value"):
        CacheKeyByIdAndIndex(1, 2**63)
    with raises_range("batch_index", -1, "uint32"):
        CacheKeyByIdAndIndex(1, 2, -1)
    with pytest.raises(TypeError):
        CacheKeyByIdAndIndex(1, "2")


# ---- Cache -------------------------------------------------------------------------------------------


def host_cache(shape=(2, 4), num_tensors=2, dtype=np.float32, data_type=DataType.DT_FLOAT):
    arrays = [np.zeros(shape, dtype=dtype) for _ in range(num_tensors)]
    desc = CacheDesc(num_tensors, list(shape), data_type, Placement.HOST)
    return Cache.create_cpu_cache(desc, [a.ctypes.data for a in arrays]), arrays


def test_cache_properties_and_str():
    desc = CacheDesc(2, [1, 4], DataType.DT_INT8)
    cache = Cache(3, desc, [100, 200])
    assert cache.cache_id == 3
    assert cache.cache_desc is desc
    assert cache.tensor_addrs == [100, 200]
    assert cache.per_device_tensor_addrs == [[100, 200]]
    assert cache.is_blocks_cache is False
    assert str(cache) == "Cache(cache_id = 3, device_tensor_addrs = 2, is_blocks_cache = False)"
    assert repr(cache) == str(cache)
    with raises_range("cache_id", 2**63, "int64"):
        Cache(2**63, desc, [])


def test_create_cpu_cache():
    cache, arrays = host_cache()
    assert cache.cache_id == -1
    assert cache.is_blocks_cache is True
    assert cache.tensor_addrs == [a.ctypes.data for a in arrays]
    assert str(cache) == "Cache(cache_id = -1, device_tensor_addrs = 2, is_blocks_cache = True)"
    device_desc = CacheDesc(1, [1], DataType.DT_INT8)
    with raises_le("cache_desc placement must be HOST"):
        Cache.create_cpu_cache(device_desc, [1])
    host_desc = CacheDesc(2, [1], DataType.DT_INT8, Placement.HOST)
    with raises_le("cache_desc num_tensors:2 not equal addrs num:1"):
        Cache.create_cpu_cache(host_desc, [1])
    with pytest.raises(TypeError, match=re.escape("addrs only support ['list'], but got <class 'tuple'>.")):
        Cache.create_cpu_cache(host_desc, (1, 2))
    with pytest.raises(TypeError):
        Cache.create_cpu_cache(None, [1])


def test_numpy_views_are_zero_copy():
    cache, arrays = host_cache()
    view = cache.numpy(1)
    assert view.shape == (2, 4)
    assert view.dtype == np.float32
    view[1, 2] = 7.5
    assert arrays[1][1, 2] == 7.5
    arrays[0][0, 0] = 3.0
    assert cache.numpy()[0, 0] == 3.0
    tensors = cache.tensors()
    assert len(tensors) == 2
    assert tensors[1][1, 2] == 7.5


def test_numpy_bf16_and_bool_views():
    cache, arrays = host_cache(shape=(3,), num_tensors=1, dtype=np.uint16, data_type=DataType.DT_BF16)
    assert cache.numpy().dtype.itemsize == 2
    arrays[0][:] = 0x3F80  # 1.0 in bfloat16
    assert cache.numpy().view(np.uint16).tolist() == [0x3F80] * 3
    cache, arrays = host_cache(shape=(4,), num_tensors=1, dtype=np.uint8, data_type=DataType.DT_BOOL)
    arrays[0][2] = 1
    assert cache.numpy().tolist() == [False, False, True, False]


def test_numpy_errors_and_deallocation():
    cache, _ = host_cache()
    for bad in (-1, 2):
        with raises_le(f"tensor_index {bad} out of range, [0, 2)") as info:
            cache.numpy(bad)
        assert info.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
    cache._invalidate()
    assert cache.tensor_addrs == []
    assert cache.per_device_tensor_addrs == [[]]
    with pytest.raises(RuntimeError, match="deallocated"):
        cache.numpy(0)


def test_numpy_uses_view_factory():
    backing = [np.arange(4, dtype=np.int32), np.arange(4, 8, dtype=np.int32)]
    desc = CacheDesc(2, [4], DataType.DT_INT32)
    cache = Cache(1, desc, [11, 22], view_factory=lambda i: backing[i])
    assert cache.numpy(1) is backing[1]
    assert [t.tolist() for t in cache.tensors()] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_kv_cache():
    desc = CacheDesc(2, [1], DataType.DT_INT8, Placement.HOST)
    cache = KvCache.create_cpu_cache(desc, [1, 2])
    assert cache.cache_id == -1
    assert cache.per_device_tensor_addrs == [[1, 2]]
    assert KvCache.create_cpu_cache(desc, [[1, 2], [3, 4]]).per_device_tensor_addrs == [[1, 2], [3, 4]]
    assert str(cache) == "KvCache(cache_id = -1, num_devices = 1)"
    with raises_le("addrs length should be bigger than zero."):
        KvCache.create_cpu_cache(desc, [])


# ---- transfer configs --------------------------------------------------------------------------------


def test_transfer_config():
    config = TransferConfig(1, [10, 11, 12, 13])
    assert config.dst_cluster_id == 1
    assert config.dst_addrs == [10, 11, 12, 13]
    assert config.src_layer_range is None
    assert config.src_batch_index == 0
    assert config.dst_layer_range is None
    config.src_layer_range = range(0, 2)
    config.src_batch_index = 3
    config.dst_addrs = (1, 2)
    config.dst_cluster_id = 2**64 - 1
    config.dst_layer_range = range(1, 3)
    assert TransferConfig(1, (1, 2), range(1, 2), 1).src_layer_range == range(1, 2)


def test_transfer_config_errors():
    with pytest.raises(
        TypeError, match=re.escape("dst_addrs only support ['list', 'tuple'], but got <class 'NoneType'>.")
    ):
        TransferConfig(1, None)
    with raises_range("dst_addrs", -1, "uint64"):
        TransferConfig(1, [0, -1])
    with raises_range("dst_cluster_id", -1, "uint64"):
        TransferConfig(-1, [0])
    with pytest.raises(
        TypeError, match=re.escape("src_layer_range only support ['range'], but got <class 'list'>.")
    ):
        TransferConfig(1, [0], [0, 1])
    with raises_le("check src_layer_range.step == 1 failed"):
        TransferConfig(1, [0], range(0, 4, 2))
    with raises_le("check 0 <= range.start < range.stop failed, src_layer_range = range(2, 2)"):
        TransferConfig(1, [0], range(2, 2))
    with pytest.raises(ValueError, match="src_batch_index"):
        TransferConfig(1, [0], None, -1)
    config = TransferConfig(1, [0])
    with pytest.raises(LLMException):
        config.src_layer_range = range(3, 1)


def test_transfer_with_cache_key_config():
    key = CacheKeyByIdAndIndex(5, 1)
    config = TransferWithCacheKeyConfig(key, range(1, 2), range(0, 1), 2)
    assert config.cache_key is key
    assert config.src_layer_range == range(1, 2)
    assert config.dst_layer_range == range(0, 1)
    assert config.src_batch_index == 2
    assert config.dst_cluster_id == 5
    config.cache_key = BlocksCacheKey(7)
    assert config.dst_cluster_id == 7
    with raises_le("src_batch_index shoulde be 0 when cache_key is BlocksCacheKey."):
        config.src_batch_index = 1
    blocks = TransferWithCacheKeyConfig(BlocksCacheKey(1), range(0, 2), range(2, 4))
    assert blocks.src_batch_index == 0


def test_transfer_with_cache_key_config_errors():
    key = CacheKeyByIdAndIndex(5, 1)
    with pytest.raises(
        TypeError, match=re.escape("src_layer_range only support ['range'], but got <class 'NoneType'>.")
    ):
        TransferWithCacheKeyConfig(key)
    with pytest.raises(TypeError, match="dst_layer_range"):
        TransferWithCacheKeyConfig(key, range(0, 1))
    with raises_le("src_layer_range size shoulde be equal to dst_layer_range size"):
        TransferWithCacheKeyConfig(key, range(0, 2), range(0, 1))
    with raises_le("src_batch_index shoulde be 0 when cache_key is BlocksCacheKey."):
        TransferWithCacheKeyConfig(BlocksCacheKey(1), range(0, 1), range(0, 1), 1)
    with pytest.raises(
        TypeError,
        match=re.escape(
            "cache_key only support ['BlocksCacheKey', 'CacheKeyByIdAndIndex'], "
            "but got <class 'llm_datadist.v2.llm_types.CacheKey'>."
        ),
    ):
        TransferWithCacheKeyConfig(CacheKey(1, 1), range(0, 1), range(0, 1))
    with raises_range("src_batch_index", 2**32, "uint32"):
        TransferWithCacheKeyConfig(key, range(0, 1), range(0, 1), 2**32)


def test_layer_synchronizer_is_abstract():
    with pytest.raises(TypeError):
        LayerSynchronizer()

    class Sync(LayerSynchronizer):
        def synchronize_layer(self, layer_index, timeout_in_millis):
            return layer_index >= 0

    assert Sync().synchronize_layer(0, None) is True


def test_cache_task_converts_timeouts():
    calls = []

    class Fake:
        def get(self, timeout):
            calls.append(("get", timeout))
            return LLMStatusCode.LLM_SUCCESS

        def get_results(self, timeout):
            calls.append(("results", timeout))
            return [LLMStatusCode.LLM_SUCCESS, None]

    task = CacheTask(Fake())
    assert task.synchronize() is LLMStatusCode.LLM_SUCCESS
    assert task.synchronize(1500) is LLMStatusCode.LLM_SUCCESS
    assert task.get_results(20) == [LLMStatusCode.LLM_SUCCESS, None]
    assert calls == [("get", None), ("get", 1.5), ("results", 0.02)]
    with pytest.raises(ValueError, match="timeout_in_millis"):
        task.synchronize(-1)
