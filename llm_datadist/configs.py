"""``LLMConfig``: builds the option dict passed to ``LLMDataDist.init``.

Pure Python: importing it loads neither numpy nor the native core (the operator builds options with it).
``LLMClusterInfo`` and ``LLMRole``, re-exported here as in the reference, load on first use.
"""

import json
from typing import TYPE_CHECKING, Any

from llm_datadist.utils.utils import (
    MAX_UINT32,
    check_dict,
    check_int32,
    check_isinstance,
    check_param,
    check_uint32,
)

if TYPE_CHECKING:
    from llm_datadist.v2.llm_types import LLMClusterInfo, LLMRole

__all__ = ["LLMClusterInfo", "LLMConfig", "LLMRole", "LlmConfig"]


def __getattr__(name: str) -> Any:
    if name in ("LLMClusterInfo", "LLMRole"):
        from llm_datadist.v2 import llm_types  # noqa: PLC0415 - loads numpy only when asked for

        return getattr(llm_types, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_NOT_NEGATIVE = "device_id should be greater than or equal to zero."


def _flag(value: bool) -> str:
    return "1" if value else "0"


class LLMConfig:
    """Option builder; setters validate (TypeError, ValueError, LLMException), getters give defaults.

    ``generate_options()`` fills ONE dict kept on the object and returns it, so keys accumulate across
    calls and never vanish. Assigning ``None`` to an optional setting (where the reference accepts it)
    returns it to unset.
    """

    def __init__(self) -> None:
        self._options: dict[str, str] = {}
        self._ge_options: dict[str, str] = {}
        self._device_id: int | list[int] | tuple[int, ...] | None = None
        self._sync_kv_timeout: int | str | None = None
        self._deploy_res_path = ""
        self._listen_ip_info = ""
        self._enable_switch_role = False
        self._link_total_time: int | None = None
        self._link_retry_count: int | None = None
        self._cluster_info = ""
        self._output_max_size: int | None = None
        self._mem_utilization = 0.95
        self._buf_pool_cfg = ""
        self._mem_pool_cfg = ""
        self._host_mem_pool_cfg = ""
        self._enable_cache_manager: bool | None = None
        self._enable_remote_cache_accessible: bool | None = None
        self._rdma_traffic_class: int | None = None
        self._rdma_service_level: int | None = None
        self._local_comm_res: str | None = None
        self._transfer_backend: str | None = None
        self._global_resource_config: str | None = None

    # ---- option generation -------------------------------------------------------------------

    def generate_options(self) -> dict[str, str]:
        """Write the configured options into the stored dict and return it (values are str).

        Order on first write: ``ge_options``, device, sync, deploy, memory, connection, ClusterInfo,
        OutputMaxSize, EnableSwitchRole, MemoryUtilization (always present).
        """
        opts = self._options
        opts.update(self._ge_options)
        self._add_device_options()
        if self._sync_kv_timeout is not None:
            opts["llm.SyncKvCacheWaitTime"] = str(self._sync_kv_timeout)
        if self._deploy_res_path:
            opts["llm.deployResPath"] = self._deploy_res_path
        self._add_memory_options()
        self._add_connect_options()
        if self._cluster_info:
            opts["llm.ClusterInfo"] = self._cluster_info
        if self._output_max_size is not None:
            opts["llm.OutputMaxSize"] = str(self._output_max_size)
        if self._enable_switch_role:
            opts["llm.EnableSwitchRole"] = "1"
        opts["llm.MemoryUtilization"] = str(self._mem_utilization)
        return opts

    gen_options = generate_options

    def _add_device_options(self) -> None:
        device_id = self._device_id
        if device_id is None:
            return
        if isinstance(device_id, int):
            self._options["ge.exec.deviceId"] = str(device_id)
            self._options["ge.session_device_id"] = str(device_id)
        elif device_id:
            self._options["ge.session_device_id"] = str(device_id[0])
            self._options["ge.exec.deviceId"] = ";".join(str(dev) for dev in device_id)

    def _add_memory_options(self) -> None:
        opts = self._options
        if self._buf_pool_cfg:
            opts["llm.BufPoolCfg"] = self._buf_pool_cfg
        if self._mem_pool_cfg:
            opts["llm.MemPoolConfig"] = self._mem_pool_cfg
        if self._host_mem_pool_cfg:
            opts["llm.HostMemPoolConfig"] = self._host_mem_pool_cfg
        if self._enable_cache_manager is not None:
            opts["llm.EnableCacheManager"] = _flag(self._enable_cache_manager)
        if self._enable_remote_cache_accessible is not None:
            opts["llm.EnableRemoteCacheAccessible"] = _flag(self._enable_remote_cache_accessible)

    def _add_connect_options(self) -> None:
        opts = self._options
        if self._listen_ip_info:
            opts["llm.listenIpInfo"] = self._listen_ip_info
        if self._link_total_time is not None:
            opts["llm.LinkTotalTime"] = str(self._link_total_time)
        if self._link_retry_count is not None:
            opts["llm.LinkRetryCount"] = str(self._link_retry_count)
        if self._rdma_traffic_class is not None:
            opts["llm.RdmaTrafficClass"] = str(self._rdma_traffic_class)
        if self._rdma_service_level is not None:
            opts["llm.RdmaServiceLevel"] = str(self._rdma_service_level)
        if self._local_comm_res is not None:
            opts["llm.LocalCommRes"] = self._local_comm_res
        if self._transfer_backend is not None:
            opts["llm.TransferBackend"] = self._transfer_backend
        if self._global_resource_config is not None:
            opts["llm.GlobalResourceConfig"] = self._global_resource_config

    @property
    def options(self) -> dict[str, str]:
        """The stored option dict (filled by ``generate_options``)."""
        return self._options

    # ---- general -----------------------------------------------------------------------------

    @property
    def ge_options(self) -> dict[str, str]:
        """Extra options copied verbatim (str -> str); named properties override them."""
        return self._ge_options

    @ge_options.setter
    def ge_options(self, ge_options: dict[str, str] | None) -> None:
        check_isinstance("ge_options", ge_options, dict, allow_none=True)
        if ge_options is None:
            self._ge_options = {}
            return
        check_dict("ge_options", ge_options, str, str)
        self._ge_options = ge_options

    @property
    def device_id(self) -> int | list[int] | tuple[int, ...] | None:
        """Device id (int32 >= 0) or a list/tuple of them -> ``ge.exec.deviceId``."""
        return self._device_id

    @device_id.setter
    def device_id(self, device_id: int | list[int] | tuple[int, ...]) -> None:
        check_isinstance("device_id", device_id, [list, tuple, int])
        if isinstance(device_id, list | tuple):
            check_isinstance("device_id", device_id, [list, tuple], inner=int)
            for dev in device_id:
                check_param(dev >= 0, _NOT_NEGATIVE)
            for dev in device_id:
                check_int32("device_id", dev)
        else:
            check_param(device_id >= 0, _NOT_NEGATIVE)
            check_int32("device_id", device_id)
        self._device_id = device_id

    @property
    def sync_kv_timeout(self) -> int | str | None:
        """Blocking-call timeout in ms (int or digit str, > 0, int32) -> ``llm.SyncKvCacheWaitTime``."""
        return self._sync_kv_timeout

    @sync_kv_timeout.setter
    def sync_kv_timeout(self, sync_kv_timeout: int | str) -> None:
        check_isinstance("sync_kv_timeout", sync_kv_timeout, [int, str])
        if isinstance(sync_kv_timeout, str):
            check_param(sync_kv_timeout.isdigit(), "sync_kv_timeout must be digit.")
        value = int(sync_kv_timeout)
        check_param(value > 0, "sync_kv_timeout should be greater than zero.")
        check_int32("sync_kv_timeout", value)
        self._sync_kv_timeout = sync_kv_timeout

    @property
    def deploy_res_path(self) -> str:
        """KV mode: deployment resource path -> ``llm.deployResPath``."""
        return self._deploy_res_path

    @deploy_res_path.setter
    def deploy_res_path(self, deploy_res_path: str | None) -> None:
        check_isinstance("deploy_res_path", deploy_res_path, str, allow_none=True)
        self._deploy_res_path = deploy_res_path or ""

    @property
    def enable_switch_role(self) -> bool:
        """Allow ``switch_role`` (KV mode) -> ``llm.EnableSwitchRole`` = "1" when True."""
        return self._enable_switch_role

    @enable_switch_role.setter
    def enable_switch_role(self, enable_switch_role: bool | None) -> None:
        check_isinstance("enable_switch_role", enable_switch_role, [bool], allow_none=True)
        self._enable_switch_role = bool(enable_switch_role)

    # ---- offline / KV mode ---------------------------------------------------------------------

    @property
    def cluster_info(self) -> str:
        """KV mode: cluster JSON; each ``listen_ip_info[].ip`` string is turned into an int."""
        return self._cluster_info

    @cluster_info.setter
    def cluster_info(self, cluster_info: str) -> None:
        check_isinstance("cluster_info", cluster_info, str)
        from llm_datadist.v2.llm_types import ip_str_to_int  # noqa: PLC0415 - KV mode only

        parsed = json.loads(cluster_info)
        if "listen_ip_info" in parsed:
            for ip_info in parsed["listen_ip_info"]:
                ip_info["ip"] = ip_str_to_int(ip_info["ip"])
        self._cluster_info = json.dumps(parsed)

    @property
    def output_max_size(self) -> int | None:
        """KV mode -> ``llm.OutputMaxSize``."""
        return self._output_max_size

    @output_max_size.setter
    def output_max_size(self, output_max_size: int | None) -> None:
        check_isinstance("output_max_size", output_max_size, int, allow_none=True)
        self._output_max_size = output_max_size

    @property
    def mem_utilization(self) -> float:
        """Fraction of device memory to use, float in [0, 1] -> ``llm.MemoryUtilization``."""
        return self._mem_utilization

    @mem_utilization.setter
    def mem_utilization(self, mem_utilization: float) -> None:
        check_isinstance("mem_utilization", mem_utilization, float)
        check_param(
            0.0 <= mem_utilization <= 1.0,
            f"mem_utilization must be in range [0,1], current:{mem_utilization}",
        )
        self._mem_utilization = mem_utilization

    @property
    def buf_pool_cfg(self) -> str:
        """KV mode buffer-pool JSON -> ``llm.BufPoolCfg``."""
        return self._buf_pool_cfg

    @buf_pool_cfg.setter
    def buf_pool_cfg(self, buf_pool_cfg: str | None) -> None:
        check_isinstance("buf_pool_cfg", buf_pool_cfg, str, allow_none=True)
        self._buf_pool_cfg = buf_pool_cfg or ""

    # ---- cache-manager mode --------------------------------------------------------------------

    @property
    def listen_ip_info(self) -> str:
        """``"ip:port"`` to listen on (server side of ``link_clusters``) -> ``llm.listenIpInfo``."""
        return self._listen_ip_info

    @listen_ip_info.setter
    def listen_ip_info(self, listen_ip_info: str | None) -> None:
        check_isinstance("listen_ip_info", listen_ip_info, str, allow_none=True)
        self._listen_ip_info = listen_ip_info or ""

    @property
    def enable_cache_manager(self) -> bool:
        """Select cache-manager mode -> ``llm.EnableCacheManager`` once set."""
        return bool(self._enable_cache_manager)

    @enable_cache_manager.setter
    def enable_cache_manager(self, enable_cache_manager: bool | None) -> None:
        check_isinstance("enable_cache_manager", enable_cache_manager, [bool], allow_none=True)
        self._enable_cache_manager = enable_cache_manager

    @property
    def enable_remote_cache_accessible(self) -> bool:
        """Allow peers to address caches by id/push -> ``llm.EnableRemoteCacheAccessible`` once set."""
        return bool(self._enable_remote_cache_accessible)

    @enable_remote_cache_accessible.setter
    def enable_remote_cache_accessible(self, enable_remote_cache_accessible: bool | None) -> None:
        check_isinstance(
            "enable_remote_cache_accessible", enable_remote_cache_accessible, [bool], allow_none=True
        )
        self._enable_remote_cache_accessible = enable_remote_cache_accessible

    @property
    def mem_pool_cfg(self) -> str:
        """Device pool JSON ``{"memory_size": N, "page_shift": 16}`` -> ``llm.MemPoolConfig``."""
        return self._mem_pool_cfg

    @mem_pool_cfg.setter
    def mem_pool_cfg(self, mem_pool_cfg: str | None) -> None:
        check_isinstance("mem_pool_cfg", mem_pool_cfg, str, allow_none=True)
        self._mem_pool_cfg = mem_pool_cfg or ""

    @property
    def host_mem_pool_cfg(self) -> str:
        """Host pool JSON -> ``llm.HostMemPoolConfig``."""
        return self._host_mem_pool_cfg

    @host_mem_pool_cfg.setter
    def host_mem_pool_cfg(self, host_mem_pool_cfg: str | None) -> None:
        check_isinstance("host_mem_pool_cfg", host_mem_pool_cfg, str, allow_none=True)
        self._host_mem_pool_cfg = host_mem_pool_cfg or ""

    @property
    def rdma_traffic_class(self) -> int | None:
        """RDMA traffic class (uint32) -> ``llm.RdmaTrafficClass``."""
        return self._rdma_traffic_class

    @rdma_traffic_class.setter
    def rdma_traffic_class(self, rdma_traffic_class: int) -> None:
        check_uint32("rdma_traffic_class", rdma_traffic_class)
        self._rdma_traffic_class = rdma_traffic_class

    @property
    def rdma_service_level(self) -> int | None:
        """RDMA service level (uint32) -> ``llm.RdmaServiceLevel``."""
        return self._rdma_service_level

    @rdma_service_level.setter
    def rdma_service_level(self, rdma_service_level: int) -> None:
        check_uint32("rdma_service_level", rdma_service_level)
        self._rdma_service_level = rdma_service_level

    @property
    def local_comm_res(self) -> str:
        """Local communication resource JSON (``""`` allowed) -> ``llm.LocalCommRes`` once set."""
        return self._local_comm_res or ""

    @local_comm_res.setter
    def local_comm_res(self, local_comm_res: str | None) -> None:
        check_isinstance("local_comm_res", local_comm_res, str, allow_none=True)
        self._local_comm_res = local_comm_res

    @property
    def transfer_backend(self) -> str:
        """Transfer backend name (e.g. ``"hixl"``) -> ``llm.TransferBackend`` once set."""
        return self._transfer_backend or ""

    @transfer_backend.setter
    def transfer_backend(self, transfer_backend: str | None) -> None:
        check_isinstance("transfer_backend", transfer_backend, str, allow_none=True)
        self._transfer_backend = transfer_backend

    @property
    def global_resource_config(self) -> str:
        """Global resource JSON -> ``llm.GlobalResourceConfig`` once set."""
        return self._global_resource_config or ""

    @global_resource_config.setter
    def global_resource_config(self, global_resource_config: str | None) -> None:
        check_isinstance("global_resource_config", global_resource_config, str, allow_none=True)
        self._global_resource_config = global_resource_config

    @property
    def link_total_time(self) -> int:
        """Link timeout in s, [0, 2**32-1] (0 = default) -> ``llm.LinkTotalTime`` once set."""
        return 0 if self._link_total_time is None else self._link_total_time

    @link_total_time.setter
    def link_total_time(self, link_total_time: int) -> None:
        check_isinstance("link_total_time", link_total_time, int)
        check_param(
            0 <= link_total_time <= MAX_UINT32,
            f"link_total_time should be an integer between [0, 2^32-1], given value is {link_total_time}",
        )
        self._link_total_time = link_total_time

    @property
    def link_retry_count(self) -> int:
        """Link attempts, [1, 100] -> ``llm.LinkRetryCount`` once set."""
        return 1 if self._link_retry_count is None else self._link_retry_count

    @link_retry_count.setter
    def link_retry_count(self, link_retry_count: int) -> None:
        check_isinstance("link_retry_count", link_retry_count, int)
        check_param(
            1 <= link_retry_count <= 100,
            f"link_retry_count should be an integer between [1, 100], given value is {link_retry_count}",
        )
        self._link_retry_count = link_retry_count


LlmConfig = LLMConfig
