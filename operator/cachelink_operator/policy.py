"""CacheLinkPolicy: which policies select a namespace, merged defaults, and limit checks.

Defaults: for each option the CacheLink's own value wins, then the highest-priority selecting policy that
sets it (ties: the name first in alphabetical order), then the built-in default. Limits: every selecting
policy's limits apply, and so do the built-in limits drawn from LLM-DataDist's documentation (16
clusters per link call, 512 links per instance). The same code runs at reconcile and in the admission
webhook, so both reject the same CacheLinks with the same rule names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cachelink_operator import models
from cachelink_operator.models import LinkStyle, Options, PolicyRef, PortRange, Role

#: the link-call timeout and in-flight bound when neither the CacheLink nor a policy sets one
LINK_TIMEOUT_MS = 3000
MAX_LINK_SETUPS_IN_FLIGHT = 4
#: documented defaults, applied after the CacheLink and its policies
BUILTIN_DEFAULTS = Options(
    device_id=0,
    mem_pool_size_bytes=64 << 20,
    page_shift=16,
    sync_kv_timeout_ms=1000,
    link_total_time_seconds=0,
    link_retry_count=1,
    enable_remote_cache_accessible=False,
    mem_utilization=0.95,
    link_style=LinkStyle.CLIENT_SERVER,
    link_initiator=Role.DECODE,
    link_timeout_ms=LINK_TIMEOUT_MS,
    max_clusters_per_link_call=16,
    max_link_setups_in_flight=MAX_LINK_SETUPS_IN_FLIGHT,
    link_authentication=True,
    finalize_timeout_seconds=300,
    cluster_id_range=models.ClusterIdRange(min=1, max=models.MAX_CLUSTER_ID),
)
#: limits that hold without any policy (LLM-DataDist: 512 links per device, 16 clusters per link call)
BUILTIN_LIMITS = models.Limits(
    max_links_per_instance=512,
    max_clusters_per_link_call=16,
    listen_port_range=PortRange(min=26000, max=27999),
)
BUILTIN_POLICY = "(built-in)"
#: a linkTotalTimeSeconds of 0 means the engine default, which is this
ENGINE_DEFAULT_LINK_TOTAL_TIME_S = 120


@dataclass(frozen=True)
class Violation:
    """One failed rule: the policy that set it, the rule (a limit's field name) and why."""

    policy: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.policy}: {self.rule}: {self.message}"


@dataclass(frozen=True)
class Usage:
    """What a CacheLink would use, measured on its desired state."""

    pool_bytes_per_instance: Mapping[str, int]
    pool_bytes_per_node: Mapping[str, int]
    links: int
    links_per_instance: Mapping[str, int]
    roles: frozenset[Role]


def selecting(policies: Iterable[PolicyRef], namespace_labels: Mapping[str, str]) -> list[PolicyRef]:
    """The policies whose namespace selector matches, in merge order (priority desc, then name)."""
    chosen = [p for p in policies if p.spec.namespace_selector.matches(dict(namespace_labels))]
    return sorted(chosen, key=lambda p: (-p.spec.priority, p.name))


def merge_options(first: Options, *rest: Options) -> Options:
    """Field by field, the first value that is set."""
    values: dict[str, object] = {}
    for name in Options.model_fields:
        for layer in (first, *rest):
            value = getattr(layer, name)
            if value is not None:
                values[name] = value
                break
    return Options.model_validate(values)


def effective_options(spec: models.CacheLinkSpec, ordered: Sequence[PolicyRef]) -> Options:
    """``spec.options`` with the policies' defaults, then the built-in defaults, filled in."""
    return merge_options(spec.options, *(p.spec.defaults for p in ordered), BUILTIN_DEFAULTS)


def side_options(spec: models.CacheLinkSpec, role: Role, merged: Options) -> Options:
    """One side's options: its own overrides on top of the merged CacheLink options."""
    overrides = Options.model_validate(spec.side(role).options.model_dump())
    return merge_options(overrides, merged)


def port_range(ordered: Sequence[PolicyRef]) -> PortRange | None:
    """The listen ports every policy allows (None if their ranges do not overlap)."""
    low, high = BUILTIN_LIMITS.listen_port_range.min, BUILTIN_LIMITS.listen_port_range.max  # type: ignore[union-attr]
    explicit = [p.spec.limits.listen_port_range for p in ordered if p.spec.limits.listen_port_range]
    if explicit:
        low = max(r.min for r in explicit)
        high = min(r.max for r in explicit)
    return PortRange(min=low, max=high) if low <= high else None


def pool_bytes(options: Options) -> int:
    """Device plus host pool bytes of one instance with these options."""
    return (options.mem_pool_size_bytes or 0) + (options.host_mem_pool_size_bytes or 0)


def _check_limits(
    name: str, limits: models.Limits, merged: Options, sides: Mapping[Role, Options], usage: Usage
) -> list[Violation]:
    found: list[Violation] = []

    def fail(rule: str, message: str) -> None:
        if all(v.rule != rule for v in found):  # one violation per rule: the first instance found
            found.append(Violation(name, rule, message))

    if limits.max_pool_bytes_per_instance is not None:
        for instance, used in sorted(usage.pool_bytes_per_instance.items()):
            if used > limits.max_pool_bytes_per_instance:
                fail(
                    "maxPoolBytesPerInstance",
                    f"instance {instance} needs {used} pool bytes"
                    f", more than {limits.max_pool_bytes_per_instance}",
                )
                break
    if limits.max_pool_bytes_per_node is not None:
        for node, used in sorted(usage.pool_bytes_per_node.items()):
            if used > limits.max_pool_bytes_per_node:
                fail(
                    "maxPoolBytesPerNode",
                    f"node {node} would hold {used} pool bytes, more than {limits.max_pool_bytes_per_node}",
                )
                break
    if limits.max_links_per_cache_link is not None and usage.links > limits.max_links_per_cache_link:
        fail("maxLinksPerCacheLink", f"{usage.links} links, more than {limits.max_links_per_cache_link}")
    if limits.max_links_per_instance is not None:
        for instance, count in sorted(usage.links_per_instance.items()):
            if count > limits.max_links_per_instance:
                fail(
                    "maxLinksPerInstance",
                    f"instance {instance} would have {count} links"
                    f", more than {limits.max_links_per_instance}",
                )
                break
    if limits.max_clusters_per_link_call is not None and (
        (merged.max_clusters_per_link_call or 0) > limits.max_clusters_per_link_call
    ):
        fail(
            "maxClustersPerLinkCall",
            f"maxClustersPerLinkCall {merged.max_clusters_per_link_call}"
            f" exceeds {limits.max_clusters_per_link_call}",
        )
    if limits.max_link_setups_in_flight is not None and (
        (merged.max_link_setups_in_flight or 0) > limits.max_link_setups_in_flight
    ):
        fail(
            "maxLinkSetupsInFlight",
            f"maxLinkSetupsInFlight {merged.max_link_setups_in_flight}"
            f" exceeds {limits.max_link_setups_in_flight}",
        )
    if limits.allowed_roles is not None:
        for role in sorted(usage.roles - set(limits.allowed_roles)):
            fail("allowedRoles", f"role {role.value} is not allowed here")
    if limits.allowed_link_styles is not None and merged.link_style not in limits.allowed_link_styles:
        fail("allowedLinkStyles", f"link style {merged.link_style} is not allowed here")
    if limits.require_link_authentication and not merged.link_authentication:
        fail(
            "requireLinkAuthentication",
            "link authentication must stay enabled (a CacheLinkPolicy with requireLinkAuthentication: false "
            "can allow turning it off)"
            if name == BUILTIN_POLICY
            else "link authentication must stay enabled",
        )
    timeouts = limits.required_timeouts
    if timeouts is not None:
        for role, options in sorted(sides.items()):
            if timeouts.max_sync_kv_timeout_ms is not None and (
                (options.sync_kv_timeout_ms or 0) > timeouts.max_sync_kv_timeout_ms
            ):
                fail(
                    "requiredTimeouts.maxSyncKvTimeoutMs",
                    f"{role.value} syncKvTimeoutMs {options.sync_kv_timeout_ms}"
                    f" exceeds {timeouts.max_sync_kv_timeout_ms}",
                )
            total = options.link_total_time_seconds or ENGINE_DEFAULT_LINK_TOTAL_TIME_S
            if (
                timeouts.max_link_total_time_seconds is not None
                and total > timeouts.max_link_total_time_seconds
            ):
                fail(
                    "requiredTimeouts.maxLinkTotalTimeSeconds",
                    f"{role.value} linkTotalTimeSeconds {total}"
                    f" exceeds {timeouts.max_link_total_time_seconds}",
                )
        if (
            timeouts.max_link_timeout_ms is not None
            and (merged.link_timeout_ms or 0) > timeouts.max_link_timeout_ms
        ):
            fail(
                "requiredTimeouts.maxLinkTimeoutMs",
                f"linkTimeoutMs {merged.link_timeout_ms} exceeds {timeouts.max_link_timeout_ms}",
            )
    return found


def evaluate(
    ordered: Sequence[PolicyRef], merged: Options, sides: Mapping[Role, Options], usage: Usage
) -> list[Violation]:
    """Every violated limit, built-in ones first, then per policy in merge order.

    Link authentication is required by the built-in limits unless a selecting policy decides
    (``requireLinkAuthentication``; ``false`` allows turning it off): a tenant alone cannot turn it off.
    """
    decided = any(p.spec.limits.require_link_authentication is not None for p in ordered)
    builtin = BUILTIN_LIMITS.model_copy(update={"require_link_authentication": not decided})
    found = _check_limits(BUILTIN_POLICY, builtin, merged, sides, usage)
    for policy in ordered:
        found.extend(_check_limits(policy.name, policy.spec.limits, merged, sides, usage))
    if port_range(ordered) is None:
        names = ", ".join(p.name for p in ordered if p.spec.limits.listen_port_range)
        found.append(
            Violation(names, "listenPortRange", "the selecting policies' port ranges do not overlap")
        )
    return found


def _selector_problems(selector: models.LabelSelector) -> list[str]:
    found = []
    for n, req in enumerate(selector.match_expressions):
        wants_values = req.operator in ("In", "NotIn")
        if wants_values and not req.values:
            found.append(f"namespaceSelector.matchExpressions[{n}]: {req.operator} needs values")
        if not wants_values and req.values:
            found.append(f"namespaceSelector.matchExpressions[{n}]: {req.operator} takes no values")
    return found


def contradictions(spec: models.CacheLinkPolicySpec) -> list[str]:
    """What in a parseable policy cannot hold together: its defaults break its own limits, or a
    limit allows nothing. Such a policy still applies (its limits hold); its ``Valid`` condition says so."""
    d, lim = spec.defaults, spec.limits
    found = _selector_problems(spec.namespace_selector)

    def above(what: str, value: int | None, limit: int | None) -> None:
        if value is not None and limit is not None and value > limit:
            found.append(f"defaults.{what} {value} exceeds the policy's own limit {limit}")

    above("maxClustersPerLinkCall", d.max_clusters_per_link_call, lim.max_clusters_per_link_call)
    above("maxLinkSetupsInFlight", d.max_link_setups_in_flight, lim.max_link_setups_in_flight)
    if d.mem_pool_size_bytes is not None or d.host_mem_pool_size_bytes is not None:
        above("pool bytes", pool_bytes(d), lim.max_pool_bytes_per_instance)
    timeouts = lim.required_timeouts
    if timeouts is not None:
        above("syncKvTimeoutMs", d.sync_kv_timeout_ms, timeouts.max_sync_kv_timeout_ms)
        above("linkTimeoutMs", d.link_timeout_ms, timeouts.max_link_timeout_ms)
        if d.link_total_time_seconds is not None:
            above(
                "linkTotalTimeSeconds",
                d.link_total_time_seconds or ENGINE_DEFAULT_LINK_TOTAL_TIME_S,
                timeouts.max_link_total_time_seconds,
            )
    if lim.require_link_authentication and d.link_authentication is False:
        found.append("defaults.linkAuthentication is false but limits.requireLinkAuthentication is true")
    if lim.allowed_link_styles is not None:
        if not lim.allowed_link_styles:
            found.append("limits.allowedLinkStyles is empty: no CacheLink can comply")
        elif d.link_style is not None and d.link_style not in lim.allowed_link_styles:
            found.append(f"defaults.linkStyle {d.link_style} is not in limits.allowedLinkStyles")
    if lim.allowed_roles is not None and not lim.allowed_roles:
        found.append("limits.allowedRoles is empty: no CacheLink can comply")
    return found


def check_policy(raw: Mapping[str, object]) -> tuple[models.CacheLinkPolicySpec | None, list[str]]:
    """Parse a policy's spec: ``(spec, problems)``; ``spec`` is None when it does not parse (ignored)."""
    try:
        spec = models.CacheLinkPolicySpec.model_validate(dict(raw))
    except ValueError as error:
        errors = getattr(error, "errors", None)
        if callable(errors):
            return None, [f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in errors()]
        return None, [str(error)]
    return spec, contradictions(spec)
