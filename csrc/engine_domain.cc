#include <algorithm>

#include "engine_internal.h"

namespace cachelink {

// -------------------------------------------------------------------------- communication domains

Status Engine::comm_link(const std::string& name, const CommPeer& self, const std::vector<CommPeer>& peers,
                         int64_t total_timeout_ms, uint64_t* comm_id) {
  CL_RETURN_IF_ERROR(check_owner());
  if (!initialized_) return {Code::kEngineFinalized, "instance is not initialized"};
  auto domain = std::make_unique<Domain>();
  domain->name = name;
  bool shares_main = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    shares_main = main_listener_ != nullptr && main_listener_->ip == self.ip && main_listener_->port == self.port;
    for (const auto& [id, d] : domains_) {
      if (d->name == name) return {Code::kParamInvalid, "communication domain '" + name + "' already exists"};
    }
  }
  if (!shares_main) CL_RETURN_IF_ERROR(start_listener(self.ip, self.port, &domain->listener));
  for (const CommPeer& p : peers) domain->peers.push_back(p.cluster_id);
  Domain* raw = domain.get();
  std::lock_guard<std::mutex> lock(mu_);
  domain->id = next_comm_id_++;
  *comm_id = domain->id;
  Deadline deadline = deadline_in_ms(total_timeout_ms);
  domain->thread = std::thread([this, raw, peers, deadline] { domain_loop(raw, peers, deadline); });
  domains_[domain->id] = std::move(domain);
  return Status::Ok();
}

void Engine::domain_loop(Domain* domain, std::vector<CommPeer> peers, Deadline deadline) {
  std::vector<bool> linked(peers.size(), false);
  size_t remaining = peers.size();
  while (remaining > 0 && !domain->stop && Clock::now() < deadline) {
    for (size_t i = 0; i < peers.size() && !domain->stop; ++i) {
      if (linked[i]) continue;
      Deadline attempt = std::min(deadline, deadline_in_ms(1000));
      int64_t ms =
          std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::milliseconds>(attempt - Clock::now()).count());
      Status st = link(peers[i].cluster_id, peers[i].ip, peers[i].port, ms);
      if (st.ok() || st.code() == Code::kAlreadyLink) {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = links_.find(peers[i].cluster_id);
        if (it != links_.end()) it->second->comm_id = domain->id;
        linked[i] = true;
        remaining -= 1;
      }
    }
    if (remaining > 0) {
      std::unique_lock<std::mutex> lock(domain->mu);
      domain->cv.wait_for(lock, std::chrono::milliseconds(100), [domain] { return domain->stop.load(); });
    }
  }
  domain->state = remaining == 0 ? 0 : 2;
}

Status Engine::comm_unlink(uint64_t comm_id) {
  CL_RETURN_IF_ERROR(check_owner());
  std::unique_ptr<Domain> domain;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = domains_.find(comm_id);
    if (it == domains_.end()) return {Code::kParamInvalid, "comm id " + std::to_string(comm_id) + " is unknown"};
    domain = std::move(it->second);
    domains_.erase(it);
  }
  domain->stop = true;
  domain->cv.notify_all();
  if (domain->thread.joinable()) domain->thread.join();
  for (uint64_t peer : domain->peers) {
    std::shared_ptr<Link> link;
    if (get_link(peer, &link).ok() && link->comm_id == comm_id) (void)unlink(peer, true);
  }
  if (domain->listener != nullptr) {
    std::unique_ptr<Listener> owned;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = listeners_.begin(); it != listeners_.end(); ++it) {
        if (it->get() == domain->listener) {
          owned = std::move(*it);
          listeners_.erase(it);
          break;
        }
      }
    }
    if (owned) {
      owned->fd.shutdown_both();
      // The accept thread waits on the listener and the wake fd; shutting the listener down wakes it.
      if (owned->thread.joinable()) owned->thread.join();
    }
  }
  return Status::Ok();
}

Status Engine::comm_status(uint64_t comm_id, int* state) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = domains_.find(comm_id);
  if (it == domains_.end()) return {Code::kParamInvalid, "comm id " + std::to_string(comm_id) + " is unknown"};
  *state = it->second->state;
  return Status::Ok();
}

}  // namespace cachelink
