#include <poll.h>

#include <algorithm>

#include "engine_internal.h"

namespace cachelink {

// ------------------------------------------------------------------------------------------- links

Status Engine::link(uint64_t remote_cluster_id, const std::string& ip, uint16_t port, int64_t timeout_ms) {
  CL_RETURN_IF_ERROR(check_owner());
  if (!initialized_) return {Code::kEngineFinalized, "instance is not initialized"};
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(remote_cluster_id);
    if (it != links_.end() && !it->second->broken) {
      return {Code::kAlreadyLink, "cluster " + std::to_string(remote_cluster_id) + " is already linked"};
    }
  }
  auto link = std::make_shared<Link>();
  link->remote_cluster_id = remote_cluster_id;
  link->ip = ip;
  link->port = port;
  Status st;
  std::unique_ptr<Conn> conn;
  std::vector<std::pair<std::string, uint64_t>> pools;
  int64_t attempts = std::max<int64_t>(1, config_.link_retry_count);
  for (int64_t i = 0; i < attempts; ++i) {
    st = open_conn(link.get(), deadline_in_ms(timeout_ms), &conn, &link->peer_incarnation, &pools);
    if (st.ok() || stopping_) break;
  }
  if (!st.ok()) return st;
  if (!config_.force_tcp && !pools.empty()) {
    bool mapped_any = false;
    for (const auto& [path, size] : pools) {
      std::shared_ptr<SharedMapping> mapping;
      // `path` is a file name the peer advertised: only inside our own pool folder, with every check.
      if (!path.empty() && SharedMapping::open_peer(config_.pool_dir, path, size, &mapping).ok()) mapped_any = true;
      link->peer_pools.push_back(std::move(mapping));
    }
    link->same_host = mapped_any;
  }
  link->idle.push_back(std::move(conn));
  link->open = 1;
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return {Code::kEngineFinalized, "instance is finalizing"};
  links_[remote_cluster_id] = std::move(link);
  return Status::Ok();
}

Status Engine::unlink(uint64_t remote_cluster_id, bool force) {
  CL_RETURN_IF_ERROR(check_owner());
  (void)force;  // a forced unlink drops only the local end; ours always does, and tells the peer when it can
  std::shared_ptr<Link> link;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(remote_cluster_id);
    if (it == links_.end()) {
      return {Code::kNotYetLink, "cluster " + std::to_string(remote_cluster_id) + " is not linked"};
    }
    link = it->second;
    links_.erase(it);
  }
  std::lock_guard<std::mutex> lock(link->mu);
  link->broken = true;
  for (auto& c : link->idle) {
    (void)send_frame(c->fd.get(), c->ch, wire::Type::kGoodbye, {}, {}, deadline_in_ms(100));
  }
  link->idle.clear();
  link->cv.notify_all();
  return Status::Ok();
}

std::vector<LinkInfo> Engine::links() const {
  std::vector<LinkInfo> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, link] : links_) {
    LinkInfo info;
    info.remote_cluster_id = id;
    info.address = link->address();
    info.state = link->broken ? "broken" : "linked";
    info.data_path = link->same_host ? "shm" : "tcp";
    info.peer_incarnation = link->peer_incarnation;
    info.comm_id = link->comm_id;
    {
      std::lock_guard<std::mutex> link_lock(link->mu);
      info.last_error = link->last_error;
    }
    out.push_back(std::move(info));
  }
  return out;
}

Status Engine::get_link(uint64_t remote_cluster_id, std::shared_ptr<Link>* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = links_.find(remote_cluster_id);
  if (it == links_.end()) {
    return {Code::kNotYetLink, "cluster " + std::to_string(remote_cluster_id) + " is not linked"};
  }
  *out = it->second;
  return Status::Ok();
}

Status Engine::lease(const std::shared_ptr<Link>& link, Deadline deadline, ConnLease* out) {
  std::unique_lock<std::mutex> lock(link->mu);
  for (;;) {
    if (link->broken) {
      return {Code::kNotYetLink, "link to cluster " + std::to_string(link->remote_cluster_id) + " is broken (" +
                                     link->last_error + "); unlink and link again"};
    }
    if (!link->idle.empty()) {
      std::unique_ptr<Conn> conn = std::move(link->idle.back());
      link->idle.pop_back();
      // An idle connection that became readable was closed by the peer (it sends nothing unasked). One idle
      // for half the idle timeout is dropped too, before the peer's listener closes it under a request.
      pollfd pfd{conn->fd.get(), POLLIN, 0};
      const bool stale = config_.idle_timeout_ms > 0 &&
                         Clock::now() - conn->last_used > std::chrono::milliseconds(config_.idle_timeout_ms / 2);
      if (stale || ::poll(&pfd, 1, 0) != 0) {
        link->open -= 1;
        continue;
      }
      out->assign(link, std::move(conn));
      return Status::Ok();
    }
    if (link->open < config_.max_connections_per_link) {
      link->open += 1;
      lock.unlock();
      std::unique_ptr<Conn> conn;
      uint64_t incarnation = 0;
      std::vector<std::pair<std::string, uint64_t>> pools;
      Status st = open_conn(link.get(), deadline, &conn, &incarnation, &pools);
      lock.lock();
      if (st.ok() && incarnation != link->peer_incarnation) {
        st = {Code::kNotYetLink, "cluster " + std::to_string(link->remote_cluster_id) +
                                     " restarted (new incarnation); unlink and link again"};
      }
      if (!st.ok()) {
        link->open -= 1;
        link->broken = true;
        link->last_error = st.message();
        if (st.code() != Code::kNotYetLink) {
          // the peer of a live link is lost while this transfer opens a connection to it: the same
          // outcome as losing it on an open connection (io_failure), so LLM_TIMEOUT, then NOT_YET_LINK
          st = {Code::kTimeout, "lost cluster " + std::to_string(link->remote_cluster_id) + " at " + link->address() +
                                    " mid-transfer: " + st.message()};
        }
        return st;
      }
      lock.unlock();
      out->assign(link, std::move(conn));
      return Status::Ok();
    }
    if (link->cv.wait_until(lock, deadline) == std::cv_status::timeout) {
      return {Code::kTimeout, "all " + std::to_string(link->open) + " connections to cluster " +
                                  std::to_string(link->remote_cluster_id) + " stayed busy until the timeout"};
    }
  }
}

}  // namespace cachelink
