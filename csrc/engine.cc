#include "engine.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>

#include "engine_internal.h"

namespace cachelink {
namespace {

std::string read_boot_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id.empty() ? "unknown-host" : id;
}

uint64_t random_u64() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

}  // namespace

// --------------------------------------------------------------------------------------- lifecycle

Engine::Engine(EngineConfig config) : config_(std::move(config)) {}

Engine::~Engine() { finalize(false); }

Status Engine::check_owner() const {
  if (owner_pid_ != 0 && ::getpid() != owner_pid_) {
    return {Code::kFailed, "this instance was initialized in process " + std::to_string(owner_pid_) +
                               " and cannot be used in a forked child; create and init a new one there"};
  }
  return Status::Ok();
}

Status Engine::init() {
  if (initialized_) return Status::Ok();
  host_id_ = config_.host_id.empty() ? read_boot_id() : config_.host_id;
  incarnation_ = random_u64() | 1;
  owner_pid_ = ::getpid();
  std::string stem = config_.pool_name.empty()
                         ? "cachelink-" + std::to_string(config_.cluster_id) + "-" + std::to_string(owner_pid_)
                         : config_.pool_name;
  std::string base = config_.pool_dir + "/" + stem;
  std::string index_path = config_.persistent_pool ? base + ".index" : "";
  if (config_.device_pool.size > 0 || config_.host_pool.size > 0) {
    CL_RETURN_IF_ERROR(store_.open_pools(base, config_.device_pool, config_.host_pool, config_.adopt_pool, index_path));
  }
  wake_ = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_.valid()) {
    store_.close(!config_.persistent_pool);
    return {Code::kFailed, std::string("eventfd(): ") + std::strerror(errno)};
  }
  stopping_ = false;
  if (!config_.listen_ip.empty()) {
    Status st = start_listener(config_.listen_ip, config_.listen_port, &main_listener_);
    if (!st.ok()) {
      stopping_ = true;
      store_.close(!config_.persistent_pool);
      wake_.reset();
      return st;
    }
  }
  initialized_ = true;
  lease_thread_ = std::thread([this] { lease_loop(); });
  return Status::Ok();
}

void Engine::lease_loop() {
  std::unique_lock<std::mutex> lock(lease_mu_);
  while (!stopping_) {
    auto next = store_.next_lease();
    if (next) {
      lease_cv_.wait_until(lock, *next);
    } else {
      lease_cv_.wait(lock);  // idle: no timer, no polling
    }
    if (stopping_) break;
    counters_.leases_expired += store_.expire_leases(std::chrono::steady_clock::now());
  }
}

Status Engine::bind_slot_key(int64_t cache_id, uint64_t slot, const SlotKey& key, int64_t lease_ms) {
  CL_RETURN_IF_ERROR(check_owner());
  int64_t lease = lease_ms >= 0 ? lease_ms : config_.key_lease_ms;
  CL_RETURN_IF_ERROR(store_.bind_slot_key(cache_id, slot, key, lease));
  if (lease > 0) {
    std::lock_guard<std::mutex> lock(lease_mu_);
    lease_cv_.notify_all();
  }
  return Status::Ok();
}

void Engine::finalize(bool release_pool) {
  if (!initialized_.exchange(false)) return;
  const bool forked_child = ::getpid() != owner_pid_;
  stopping_ = true;
  if (wake_.valid()) {
    uint64_t one = 1;
    ssize_t ignored = ::write(wake_.get(), &one, sizeof(one));
    (void)ignored;
  }
  std::map<uint64_t, std::shared_ptr<Link>> links;
  std::map<uint64_t, std::unique_ptr<Domain>> domains;
  {
    std::lock_guard<std::mutex> lock(mu_);
    links.swap(links_);
    domains.swap(domains_);
    for (auto& l : listeners_) l->fd.shutdown_both();
    for (auto& c : server_conns_) c->fd.shutdown_both();
  }
  for (auto& [id, link] : links) {
    std::lock_guard<std::mutex> lock(link->mu);
    link->broken = true;
    for (auto& c : link->idle) c->fd.shutdown_both();
    link->idle.clear();
    link->cv.notify_all();
  }
  for (auto& [id, d] : domains) {
    d->stop = true;
    d->cv.notify_all();
  }
  // A forked child has copies of these thread objects but not the threads: never join there.
  auto finish = [forked_child](std::thread& t) {
    if (!t.joinable()) return;
    if (forked_child) {
      t.detach();
    } else {
      t.join();
    }
  };
  for (auto& [id, d] : domains) finish(d->thread);
  {
    std::lock_guard<std::mutex> lock(lease_mu_);
    lease_cv_.notify_all();
  }
  finish(lease_thread_);
  std::list<std::unique_ptr<Listener>> listeners;
  std::list<std::unique_ptr<ServerConn>> conns;
  {
    std::lock_guard<std::mutex> lock(mu_);
    listeners.swap(listeners_);
    main_listener_ = nullptr;
  }
  for (auto& l : listeners) finish(l->thread);
  {
    std::lock_guard<std::mutex> lock(mu_);
    conns.swap(server_conns_);
  }
  for (auto& c : conns) finish(c->thread);
  conns.clear();
  store_.close(!forked_child && (release_pool || !config_.persistent_pool));
  wake_.reset();
}

std::string Engine::listen_address() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (main_listener_ == nullptr) return "";
  return main_listener_->ip + ":" + std::to_string(main_listener_->port);
}

Status Engine::relisten(const std::string& ip, uint16_t port) {
  CL_RETURN_IF_ERROR(check_owner());
  if (!initialized_) return {Code::kEngineFinalized, "instance is not initialized"};
  Listener* fresh = nullptr;
  if (!ip.empty()) CL_RETURN_IF_ERROR(start_listener(ip, port, &fresh));
  std::unique_ptr<Listener> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = listeners_.begin(); it != listeners_.end(); ++it) {
      if (it->get() == main_listener_) {
        old = std::move(*it);
        listeners_.erase(it);
        break;
      }
    }
    main_listener_ = fresh;
    config_.listen_ip = ip;
    config_.listen_port = fresh != nullptr ? fresh->port : 0;
  }
  if (old) {
    old->fd.shutdown_both();  // wakes its accept thread
    if (old->thread.joinable()) old->thread.join();
  }
  return Status::Ok();
}

std::string Engine::current_role() const {
  std::lock_guard<std::mutex> lock(mu_);
  return config_.role;
}

void Engine::set_role(const std::string& role) {
  std::lock_guard<std::mutex> lock(mu_);
  config_.role = role;
}

}  // namespace cachelink
