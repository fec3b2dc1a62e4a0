// pybind11 binding of the CacheLink core: thin shims over Engine, one error translator.
//
// Every C++ failure is a Status; `throw_if_error` turns a failed one into `_core.CoreError(code, message)`,
// which llm_datadist/_native.py translates into LLMException with the matching LLMStatusCode.
// Blocking and bulk calls release the GIL; arguments are converted before it is released.
#include <pybind11/native_enum.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "engine.h"

namespace py = pybind11;

namespace cachelink {
namespace {

/// A failed Status on its way to Python: the translator below raises it as `_core.CoreError(code, message)`.
struct CoreError : std::runtime_error {
  CoreError(Code c, const std::string& message) : std::runtime_error(message), code(c) {}
  Code code;
};

void throw_if_error(const Status& st) {
  if (!st.ok()) throw CoreError{st.code(), st.message()};
}

using EnginePtr = std::shared_ptr<Engine>;

py::array tensor_view(Engine& engine, int64_t cache_id, uint32_t tensor_index) {
  auto info = engine.store().find(cache_id);
  if (!info) throw CoreError{Code::kParamInvalid, "cache " + std::to_string(cache_id) + " does not exist"};
  if (tensor_index >= info->addrs.size()) {
    throw CoreError{Code::kParamInvalid, "tensor index " + std::to_string(tensor_index) + " out of range"};
  }
  // The capsule keeps the pool mapped for as long as any view of it lives, even past finalize().
  auto mapping = engine.store().mapping_of(cache_id);
  py::capsule keep_alive(new std::shared_ptr<SharedMapping>(std::move(mapping)), [](void* p) {
    delete static_cast<std::shared_ptr<SharedMapping>*>(p);  // NOLINT: capsule owns the holder
  });
  auto* data = reinterpret_cast<uint8_t*>(info->addrs[tensor_index]);
  return py::array_t<uint8_t>({static_cast<py::ssize_t>(info->tensor_bytes)}, {1}, data, keep_alive);
}

/// memcpy of `length` bytes for each tensor pair and each (dst index, src index) pair; local copies.
void copy_units(const std::vector<uint64_t>& dst_addrs, uint64_t dst_unit, const std::vector<uint64_t>& dst_index,
                uint64_t dst_offset, const std::vector<uint64_t>& src_addrs, uint64_t src_unit,
                const std::vector<uint64_t>& src_index, uint64_t src_offset, uint64_t length) {
  if (dst_addrs.size() != src_addrs.size() || dst_index.size() != src_index.size()) {
    throw CoreError{Code::kParamInvalid, "copy lists differ in length"};
  }
  py::gil_scoped_release release;
  for (size_t t = 0; t < dst_addrs.size(); ++t) {
    for (size_t i = 0; i < dst_index.size(); ++i) {
      auto* d = reinterpret_cast<uint8_t*>(dst_addrs[t] + dst_index[i] * dst_unit + dst_offset);
      const auto* s = reinterpret_cast<const uint8_t*>(src_addrs[t] + src_index[i] * src_unit + src_offset);
      std::memmove(d, s, length);
    }
  }
}

wire::TransferRequest make_request(uint8_t kind, uint64_t a, uint64_t b, uint64_t c, const wire::Extent& extent,
                                   uint8_t flags) {
  if (kind < 1 || kind > 4) throw CoreError{Code::kParamInvalid, "unknown cache reference kind"};
  wire::TransferRequest req;
  req.ref = {static_cast<wire::RefKind>(kind), a, b, c};
  req.extent = extent;
  req.flags = flags;
  return req;
}

}  // namespace
}  // namespace cachelink

PYBIND11_MODULE(_core, m) {
  using namespace cachelink;
  m.doc() = "CacheLink native core: pools, caches, links and transfers (private; use llm_datadist).";

  static py::exception<CoreError> core_error(m, "CoreError", PyExc_RuntimeError);
  // NOLINTNEXTLINE(performance-unnecessary-value-param): pybind11's translator type takes it by value
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const CoreError& e) {
      py::object args = py::make_tuple(static_cast<uint32_t>(e.code), std::string(e.what()));
      PyErr_SetObject(core_error.ptr(), args.ptr());
    }
  });

  // The core's status codes and pool kinds, so Python reads them from here instead of copying them
  // (tests/unit/test_core_constants.py checks that every code maps to an LLMStatusCode).
  py::native_enum<Code>(m, "Code", "enum.IntEnum", "Status codes of the core (LLMStatusCode values).")
      .value("SUCCESS", Code::kSuccess)
      .value("WAIT_PROCESS_TIMEOUT", Code::kWaitProcTimeout)
      .value("KV_CACHE_NOT_EXIST", Code::kKvCacheNotExist)
      .value("REPEAT_REQUEST", Code::kRepeatRequest)
      .value("PARAM_INVALID", Code::kParamInvalid)
      .value("ENGINE_FINALIZED", Code::kEngineFinalized)
      .value("NOT_YET_LINK", Code::kNotYetLink)
      .value("ALREADY_LINK", Code::kAlreadyLink)
      .value("LINK_FAILED", Code::kLinkFailed)
      .value("UNLINK_FAILED", Code::kUnlinkFailed)
      .value("CLUSTER_NUM_EXCEED_LIMIT", Code::kClusterNumExceedLimit)
      .value("PROCESSING_LINK", Code::kProcessingLink)
      .value("EXIST_LINK", Code::kExistLink)
      .value("FEATURE_NOT_ENABLED", Code::kFeatureNotEnabled)
      .value("TIMEOUT", Code::kTimeout)
      .value("LINK_BUSY", Code::kLinkBusy)
      .value("OUT_OF_MEMORY", Code::kOutOfMemory)
      .value("FAILED", Code::kFailed)
      .finalize();
  py::native_enum<PoolKind>(m, "PoolKind", "enum.IntEnum", "Where a cache lives (CacheInfo.pool values).")
      .value("REGISTERED", PoolKind::kRegistered)
      .value("DEVICE", PoolKind::kDevice)
      .value("HOST", PoolKind::kHost)
      .finalize();

  py::class_<PoolConfig>(m, "PoolConfig")
      .def(py::init<>())
      .def_readwrite("size", &PoolConfig::size)
      .def_readwrite("page_shift", &PoolConfig::page_shift);

  py::class_<EngineConfig>(m, "EngineConfig")
      .def(py::init<>())
      .def_readwrite("cluster_id", &EngineConfig::cluster_id)
      .def_readwrite("role", &EngineConfig::role)
      .def_readwrite("listen_ip", &EngineConfig::listen_ip)
      .def_readwrite("listen_port", &EngineConfig::listen_port)
      .def_readwrite("device_pool", &EngineConfig::device_pool)
      .def_readwrite("host_pool", &EngineConfig::host_pool)
      .def_readwrite("pool_dir", &EngineConfig::pool_dir)
      .def_readwrite("pool_name", &EngineConfig::pool_name)
      .def_readwrite("persistent_pool", &EngineConfig::persistent_pool)
      .def_readwrite("adopt_pool", &EngineConfig::adopt_pool)
      .def_readwrite("host_id", &EngineConfig::host_id)
      .def_readwrite("force_tcp", &EngineConfig::force_tcp)
      .def_readwrite("checksum", &EngineConfig::checksum)
      .def_readwrite("sync_timeout_ms", &EngineConfig::sync_timeout_ms)
      .def_readwrite("link_retry_count", &EngineConfig::link_retry_count)
      .def_readwrite("max_connections_per_link", &EngineConfig::max_connections_per_link)
      .def_readwrite("tcp_stripes", &EngineConfig::tcp_stripes)
      .def_readwrite("copy_threads", &EngineConfig::copy_threads)
      .def_readwrite("link_secret", &EngineConfig::link_secret)
      .def_readwrite("key_lease_ms", &EngineConfig::key_lease_ms)
      .def_readwrite("link_encryption", &EngineConfig::link_encryption)
      .def_readwrite("max_server_connections", &EngineConfig::max_server_connections)
      .def_readwrite("max_connections_per_source", &EngineConfig::max_connections_per_source)
      .def_readwrite("handshake_timeout_ms", &EngineConfig::handshake_timeout_ms)
      .def_readwrite("idle_timeout_ms", &EngineConfig::idle_timeout_ms);

  py::class_<wire::Extent>(m, "Extent")
      .def(py::init<>())
      .def_readwrite("tensor_start", &wire::Extent::tensor_start)
      .def_readwrite("tensor_count", &wire::Extent::tensor_count)
      .def_property(
          "blocks_unit", [](const wire::Extent& e) { return e.unit == wire::Unit::kBlocks; },
          [](wire::Extent& e, bool blocks) { e.unit = blocks ? wire::Unit::kBlocks : wire::Unit::kSlot; })
      .def_readwrite("slot", &wire::Extent::slot)
      .def_readwrite("offset", &wire::Extent::offset)
      .def_readwrite("length", &wire::Extent::length)
      .def_readwrite("block_bytes", &wire::Extent::block_bytes)
      .def_readwrite("blocks", &wire::Extent::blocks);
  m.attr("WHOLE_SLOT") = wire::kWholeSlot;
  m.attr("FLAG_RELEASE_KEY") = static_cast<int>(wire::kFlagReleaseKey);
  m.attr("FLAG_ALLOW_SHORT") = static_cast<int>(wire::kFlagAllowShort);

  py::class_<CacheInfo>(m, "CacheInfo")
      .def_readonly("id", &CacheInfo::id)
      .def_readonly("blocks", &CacheInfo::blocks)
      .def_readonly("num_tensors", &CacheInfo::num_tensors)
      .def_readonly("tensor_bytes", &CacheInfo::tensor_bytes)
      .def_readonly("units", &CacheInfo::units)
      .def_readonly("pool", &CacheInfo::pool)
      .def_readonly("remote_accessible", &CacheInfo::remote_accessible)
      .def_readonly("meta", &CacheInfo::meta)
      .def_readonly("addrs", &CacheInfo::addrs)
      .def_readonly("slot_keys", &CacheInfo::slot_keys)
      .def_readonly("blocks_model_id", &CacheInfo::blocks_model_id);

  py::class_<LinkInfo>(m, "LinkInfo")
      .def_readonly("remote_cluster_id", &LinkInfo::remote_cluster_id)
      .def_readonly("address", &LinkInfo::address)
      .def_readonly("state", &LinkInfo::state)
      .def_readonly("data_path", &LinkInfo::data_path)
      .def_readonly("peer_incarnation", &LinkInfo::peer_incarnation)
      .def_readonly("comm_id", &LinkInfo::comm_id)
      .def_readonly("last_error", &LinkInfo::last_error);

  py::class_<Engine, EnginePtr>(m, "Engine")
      .def(py::init<EngineConfig>(), py::arg("config"))
      .def(
          "init", [](Engine& e) { throw_if_error(e.init()); }, py::call_guard<py::gil_scoped_release>())
      .def("finalize", &Engine::finalize, py::arg("release_pool"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("initialized", &Engine::initialized)
      .def_property_readonly("incarnation", &Engine::incarnation)
      .def_property_readonly("host_id", &Engine::host_id)
      .def_property_readonly("listen_address", &Engine::listen_address)
      .def("check_owner", [](const Engine& e) { throw_if_error(e.check_owner()); })
      .def(
          "relisten",
          [](Engine& e, const std::string& ip, uint16_t port) {
            Status st;
            {
              py::gil_scoped_release release;
              st = e.relisten(ip, port);
            }
            throw_if_error(st);
          },
          py::arg("ip"), py::arg("port"))
      .def("set_role", &Engine::set_role, py::arg("role"))
      .def(
          "allocate",
          [](Engine& e, int pool, bool blocks, uint32_t num_tensors, uint64_t tensor_bytes, uint64_t units,
             const std::string& meta) {
            throw_if_error(e.check_owner());
            CacheInfo info;
            throw_if_error(
                e.store().allocate(static_cast<PoolKind>(pool), blocks, num_tensors, tensor_bytes, units, meta, &info));
            return info;
          },
          py::arg("pool"), py::arg("blocks"), py::arg("num_tensors"), py::arg("tensor_bytes"), py::arg("units"),
          py::arg("meta"))
      .def(
          "register_memory",
          [](Engine& e, bool blocks, uint32_t num_tensors, uint64_t tensor_bytes, uint64_t units,
             const std::vector<uint64_t>& addrs, bool remote_accessible, const std::string& meta) {
            throw_if_error(e.check_owner());
            CacheInfo info;
            throw_if_error(e.store().register_memory(blocks, num_tensors, tensor_bytes, units, addrs, remote_accessible,
                                                     meta, &info));
            return info;
          },
          py::arg("blocks"), py::arg("num_tensors"), py::arg("tensor_bytes"), py::arg("units"), py::arg("addrs"),
          py::arg("remote_accessible"), py::arg("meta"))
      .def(
          "bind_slot_key",
          [](Engine& e, int64_t id, uint64_t slot, uint64_t req, uint64_t model, uint64_t prefix, int64_t lease_ms) {
            throw_if_error(e.bind_slot_key(id, slot, SlotKey{req, model, prefix}, lease_ms));
          },
          py::arg("cache_id"), py::arg("slot"), py::arg("req_id"), py::arg("model_id"), py::arg("prefix_id"),
          py::arg("lease_ms") = -1)
      .def(
          "bind_blocks_key",
          [](Engine& e, int64_t id, uint64_t model) { throw_if_error(e.store().bind_blocks_key(id, model)); },
          py::arg("cache_id"), py::arg("model_id"))
      .def(
          "deallocate",
          [](Engine& e, int64_t id, bool expect_blocks) { throw_if_error(e.store().deallocate(id, expect_blocks)); },
          py::arg("cache_id"), py::arg("expect_blocks"))
      .def(
          "remove_slot_key",
          [](Engine& e, uint64_t req, uint64_t model, uint64_t prefix) {
            e.store().remove_slot_key(SlotKey{req, model, prefix});
          },
          py::arg("req_id"), py::arg("model_id"), py::arg("prefix_id"))
      .def(
          "remove_blocks_key", [](Engine& e, uint64_t model) { e.store().remove_blocks_key(model); },
          py::arg("model_id"))
      .def("list_caches", [](Engine& e) { return e.store().list(); })
      .def(
          "find_cache", [](Engine& e, int64_t id) { return e.store().find(id); }, py::arg("cache_id"))
      .def(
          "tensor_view", [](Engine& e, int64_t id, uint32_t t) { return tensor_view(e, id, t); }, py::arg("cache_id"),
          py::arg("tensor_index"))
      .def(
          "pool_usage",
          [](Engine& e, int pool) {
            PoolUsage u = e.store().usage(static_cast<PoolKind>(pool));
            return py::make_tuple(u.capacity, u.used);
          },
          py::arg("pool"))
      .def(
          "pool_base", [](Engine& e, int pool) { return e.store().pool_base(static_cast<PoolKind>(pool)); },
          py::arg("pool"))
      .def(
          "link",
          [](Engine& e, uint64_t remote, const std::string& ip, uint16_t port, int64_t timeout_ms) {
            Status st;
            {
              py::gil_scoped_release release;
              st = e.link(remote, ip, port, timeout_ms);
            }
            throw_if_error(st);
          },
          py::arg("remote_cluster_id"), py::arg("ip"), py::arg("port"), py::arg("timeout_ms"))
      .def(
          "unlink",
          [](Engine& e, uint64_t remote, bool force) {
            Status st;
            {
              py::gil_scoped_release release;
              st = e.unlink(remote, force);
            }
            throw_if_error(st);
          },
          py::arg("remote_cluster_id"), py::arg("force"))
      .def("links", &Engine::links)
      .def("clients", &Engine::clients)
      .def(
          "comm_link",
          [](Engine& e, const std::string& name, uint64_t self_id, const std::string& self_ip, uint16_t self_port,
             const std::vector<std::tuple<uint64_t, std::string, uint16_t>>& peers, int64_t total_timeout_ms) {
            std::vector<CommPeer> list;
            list.reserve(peers.size());
            for (const auto& [id, ip, port] : peers) list.push_back({id, ip, port});
            uint64_t comm_id = 0;
            Status st;
            {
              py::gil_scoped_release release;
              st = e.comm_link(name, CommPeer{self_id, self_ip, self_port}, list, total_timeout_ms, &comm_id);
            }
            throw_if_error(st);
            return comm_id;
          },
          py::arg("name"), py::arg("self_cluster_id"), py::arg("self_ip"), py::arg("self_port"), py::arg("peers"),
          py::arg("total_timeout_ms"))
      .def(
          "comm_unlink",
          [](Engine& e, uint64_t comm_id) {
            Status st;
            {
              py::gil_scoped_release release;
              st = e.comm_unlink(comm_id);
            }
            throw_if_error(st);
          },
          py::arg("comm_id"))
      .def(
          "comm_status",
          [](Engine& e, uint64_t comm_id) {
            int state = 2;
            throw_if_error(e.comm_status(comm_id, &state));
            return state;
          },
          py::arg("comm_id"))
      .def(
          "transfer",
          [](Engine& e, bool is_pull, uint64_t remote, uint8_t kind, uint64_t a, uint64_t b, uint64_t c,
             const wire::Extent& remote_extent, uint8_t flags, int64_t local_cache, const wire::Extent& local_extent,
             int64_t timeout_ms) {
            wire::TransferRequest req = make_request(kind, a, b, c, remote_extent, flags);
            Status st;
            {
              py::gil_scoped_release release;
              st = is_pull ? e.pull(remote, req, local_cache, local_extent, timeout_ms)
                           : e.push(remote, req, local_cache, local_extent, timeout_ms);
            }
            throw_if_error(st);
          },
          py::arg("is_pull"), py::arg("remote_cluster_id"), py::arg("ref_kind"), py::arg("a"), py::arg("b"),
          py::arg("c"), py::arg("remote_extent"), py::arg("flags"), py::arg("local_cache_id"), py::arg("local_extent"),
          py::arg("timeout_ms"))
      .def("counters", [](Engine& e) {
        Counters& c = e.counters();
        py::dict d;
        d["bytes_pulled"] = c.bytes_pulled.load();
        d["bytes_pushed"] = c.bytes_pushed.load();
        d["bytes_served"] = c.bytes_served.load();
        d["transfers"] = c.transfers.load();
        d["transfer_errors"] = c.transfer_errors.load();
        d["leases_expired"] = c.leases_expired.load();
        d["auth_failures"] = c.auth_failures.load();
        d["tampered_frames"] = c.tampered_frames.load();
        d["connections_refused"] = c.connections_refused.load();
        return d;
      });

  m.def("copy_units", &copy_units, py::arg("dst_addrs"), py::arg("dst_unit"), py::arg("dst_index"),
        py::arg("dst_offset"), py::arg("src_addrs"), py::arg("src_unit"), py::arg("src_index"), py::arg("src_offset"),
        py::arg("length"));
}
