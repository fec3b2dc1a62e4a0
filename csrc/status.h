// Status codes of the CacheLink core. Values are LLM-DataDist's LLMStatusCode values, so the binding
// edge maps them one to one; C++ never throws across module boundaries, it returns a Status.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace cachelink {

enum class Code : uint32_t {
  kSuccess = 0,
  kWaitProcTimeout = 0x5010B001,
  kKvCacheNotExist = 0x5010B002,
  kRepeatRequest = 0x5010B003,
  kParamInvalid = 0x5010B005,
  kEngineFinalized = 0x5010B006,
  kNotYetLink = 0x5010B007,
  kAlreadyLink = 0x5010B008,
  kLinkFailed = 0x5010B009,
  kUnlinkFailed = 0x5010B00A,
  kClusterNumExceedLimit = 0x5010B00C,
  kProcessingLink = 0x5010B00D,
  kExistLink = 0x5010B018,
  kFeatureNotEnabled = 0x5010B019,
  kTimeout = 0x5010B01A,
  kLinkBusy = 0x5010B01B,
  kOutOfMemory = 0x5010B01C,
  kFailed = 0xFFFFFFFF,
};

/// A code plus a human-readable message; cheap to return by value.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return {}; }

  bool ok() const { return code_ == Code::kSuccess; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  Code code_ = Code::kSuccess;
  std::string message_;
};

#define CL_RETURN_IF_ERROR(expr)      \
  do {                                \
    ::cachelink::Status _st = (expr); \
    if (!_st.ok()) return _st;        \
  } while (0)

}  // namespace cachelink
