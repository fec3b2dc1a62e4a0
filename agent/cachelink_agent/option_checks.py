"""An instance's engine options as the agent checks them, and engine failures as the HTTP errors they are."""

from __future__ import annotations

from cachelink_agent import models, runtime
from cachelink_agent.errors import ApiError, EngineError
from llm_datadist import LLMException
from llm_datadist.ext import options as engine_options

#: options the agent sets itself (pool placement, persistence): a request may not
RESERVED_OPTIONS = (
    "cachelink.pool_dir",
    "cachelink.pool_name",
    "cachelink.persistent_pool",
    "cachelink.adopt_pool",
)
#: the engine option naming an instance's listen address (``ip:port``)
LISTEN_OPTION = "llm.listenIpInfo"


def pool_bytes(options: dict[str, str]) -> int:
    """Shared memory an instance's options reserve (device + host pool)."""
    total = 0
    for key in ("llm.MemPoolConfig", "llm.HostMemPoolConfig"):
        text = options.get(key, "")
        if text:
            total += engine_options.parse_pool_config(key, text).memory_size
    return total


def invalid_option(message: str, key: str = "") -> ApiError:
    fields = [{"loc": f"options.{key}" if key else "options", "msg": message}]
    return ApiError(422, "invalid_options", message, llm_status="LLM_PARAM_INVALID", fields=fields)


def validate_options(spec: models.InstanceSpec) -> int:
    """Check the options as ``init`` will (without initializing); returns the pool bytes they reserve."""
    for key in RESERVED_OPTIONS:
        if key in spec.options:
            raise ApiError(
                422,
                "invalid_options",
                f"option {key} is managed by the agent and may not be set",
                fields=[{"loc": f"options.{key}", "msg": "managed by the agent"}],
            )
    try:
        engine_options.validate_options(spec.options, runtime.ROLE_NAMES[spec.role], spec.cluster_id)
        return pool_bytes(spec.options)
    except (engine_options.InvalidOption, engine_options.InvalidOptionValue) as error:
        raise invalid_option(str(error), error.key) from error
    except (LLMException, TypeError, ValueError) as error:
        raise invalid_option(str(error)) from error


def engine_failure(error: EngineError, what: str, *, options_call: bool = False) -> ApiError:
    if error.is_invalid_input:
        return (
            invalid_option(error.message, error.option_key)
            if options_call
            else ApiError(422, "invalid_request", f"{what}: {error.message}", llm_status=error.llm_status)
        )
    return ApiError(409, "engine_error", f"{what}: {error.message}", llm_status=error.llm_status)
