"""CacheLinkPolicy: which policies select a namespace, merged defaults, and limit checks.

Defaults: for each option the CacheLink's own value wins, then the highest-priority selecting policy that
sets it (ties: the name first in alphabetical order), then the built-in default. Limits: every selecting
policy's limits apply, and so do the built-in limits drawn from LLM-DataDist's documentation (16
clusters per link call, 512 links per instance). The same code runs at reconcile and in the admission
webhook, so both reject the same CacheLinks with the same rule names.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
#: the listen ports instances get when no policy narrows them
BUILTIN_PORT_RANGE = PortRange(min=26000, max=27999)
BUILTIN_LIMITS = models.Limits(
    max_links_per_instance=512,
    max_clusters_per_link_call=16,
    listen_port_range=BUILTIN_PORT_RANGE,
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
    low, high = BUILTIN_PORT_RANGE.min, BUILTIN_PORT_RANGE.max
    explicit = [p.spec.limits.listen_port_range for p in ordered if p.spec.limits.listen_port_range]
    if explicit:
        low = max(r.min for r in explicit)
        high = min(r.max for r in explicit)
    return PortRange(min=low, max=high) if low <= high else None


def pool_bytes(options: Options) -> int:
    """Device plus host pool bytes of one instance with these options."""
    return (options.mem_pool_size_bytes or 0) + (options.host_mem_pool_size_bytes or 0)


@dataclass(frozen=True)
class _Subject:
    """What one policy's limits are checked against: a CacheLink's merged options, each side's, its usage."""

    merged: Options
    sides: Mapping[Role, Options]
    usage: Usage


#: ``(rule, message)`` of each violation one group of limits finds, in the order it finds them
_Found = Iterator[tuple[str, str]]


def _first_over(values: Mapping[str, int], limit: int | None) -> tuple[str, int] | None:
    """The first entry (by key) whose value exceeds ``limit``, if there is a limit."""
    if limit is None:
        return None
    return next(((key, value) for key, value in sorted(values.items()) if value > limit), None)


def _pool_limits(limits: models.Limits, subject: _Subject) -> _Found:
    over = _first_over(subject.usage.pool_bytes_per_instance, limits.max_pool_bytes_per_instance)
    if over is not None:
        yield (
            "maxPoolBytesPerInstance",
            f"instance {over[0]} needs {over[1]} pool bytes, more than {limits.max_pool_bytes_per_instance}",
        )
    over = _first_over(subject.usage.pool_bytes_per_node, limits.max_pool_bytes_per_node)
    if over is not None:
        yield (
            "maxPoolBytesPerNode",
            f"node {over[0]} would hold {over[1]} pool bytes, more than {limits.max_pool_bytes_per_node}",
        )


def _link_count_limits(limits: models.Limits, subject: _Subject) -> _Found:
    usage = subject.usage
    if limits.max_links_per_cache_link is not None and usage.links > limits.max_links_per_cache_link:
        yield "maxLinksPerCacheLink", f"{usage.links} links, more than {limits.max_links_per_cache_link}"
    over = _first_over(usage.links_per_instance, limits.max_links_per_instance)
    if over is not None:
        yield (
            "maxLinksPerInstance",
            f"instance {over[0]} would have {over[1]} links, more than {limits.max_links_per_instance}",
        )


def _link_call_limits(limits: models.Limits, subject: _Subject) -> _Found:
    merged = subject.merged
    if limits.max_clusters_per_link_call is not None and (
        (merged.max_clusters_per_link_call or 0) > limits.max_clusters_per_link_call
    ):
        yield (
            "maxClustersPerLinkCall",
            f"maxClustersPerLinkCall {merged.max_clusters_per_link_call}"
            f" exceeds {limits.max_clusters_per_link_call}",
        )
    if limits.max_link_setups_in_flight is not None and (
        (merged.max_link_setups_in_flight or 0) > limits.max_link_setups_in_flight
    ):
        yield (
            "maxLinkSetupsInFlight",
            f"maxLinkSetupsInFlight {merged.max_link_setups_in_flight}"
            f" exceeds {limits.max_link_setups_in_flight}",
        )


def _allowed_kinds(limits: models.Limits, subject: _Subject) -> _Found:
    if limits.allowed_roles is not None:
        for role in sorted(subject.usage.roles - set(limits.allowed_roles)):
            yield "allowedRoles", f"role {role.value} is not allowed here"
    style = subject.merged.link_style
    if limits.allowed_link_styles is not None and style not in limits.allowed_link_styles:
        yield "allowedLinkStyles", f"link style {style} is not allowed here"


def _placement_limits(limits: models.Limits, subject: _Subject) -> _Found:
    if limits.allowed_nodes is not None:
        outside = sorted(set(subject.usage.pool_bytes_per_node) - set(limits.allowed_nodes))
        if outside:
            yield (
                "allowedNodes",
                f"node{'s' if len(outside) > 1 else ''} {', '.join(outside)} not allowed here",
            )
    if limits.allowed_listen_interfaces is not None:
        for role in sorted(subject.usage.roles):
            interface = subject.sides[role].listen_interface
            if interface not in limits.allowed_listen_interfaces:
                shown = repr(interface) if interface else "unset (the node's address)"
                yield (
                    "allowedListenInterfaces",
                    f"{role.value} listen interface {shown} is not allowed here"
                    f" (allowed: {', '.join(limits.allowed_listen_interfaces) or 'none'})",
                )


def _authentication(limits: models.Limits, subject: _Subject, builtin: bool) -> _Found:
    if limits.require_link_authentication and not subject.merged.link_authentication:
        yield (
            "requireLinkAuthentication",
            "link authentication must stay enabled (a CacheLinkPolicy with requireLinkAuthentication: false "
            "can allow turning it off)"
            if builtin
            else "link authentication must stay enabled",
        )


def _side_timeouts(timeouts: models.RequiredTimeouts, role: Role, options: Options) -> _Found:
    if timeouts.max_sync_kv_timeout_ms is not None and (
        (options.sync_kv_timeout_ms or 0) > timeouts.max_sync_kv_timeout_ms
    ):
        yield (
            "requiredTimeouts.maxSyncKvTimeoutMs",
            f"{role.value} syncKvTimeoutMs {options.sync_kv_timeout_ms}"
            f" exceeds {timeouts.max_sync_kv_timeout_ms}",
        )
    total = options.link_total_time_seconds or ENGINE_DEFAULT_LINK_TOTAL_TIME_S
    if timeouts.max_link_total_time_seconds is not None and total > timeouts.max_link_total_time_seconds:
        yield (
            "requiredTimeouts.maxLinkTotalTimeSeconds",
            f"{role.value} linkTotalTimeSeconds {total} exceeds {timeouts.max_link_total_time_seconds}",
        )


def _timeout_limits(limits: models.Limits, subject: _Subject) -> _Found:
    timeouts = limits.required_timeouts
    if timeouts is None:
        return
    for role, options in sorted(subject.sides.items()):
        yield from _side_timeouts(timeouts, role, options)
    link_timeout = subject.merged.link_timeout_ms
    if timeouts.max_link_timeout_ms is not None and (link_timeout or 0) > timeouts.max_link_timeout_ms:
        yield (
            "requiredTimeouts.maxLinkTimeoutMs",
            f"linkTimeoutMs {link_timeout} exceeds {timeouts.max_link_timeout_ms}",
        )


def _check_limits(
    name: str, limits: models.Limits, merged: Options, sides: Mapping[Role, Options], usage: Usage
) -> list[Violation]:
    """The limits of policy ``name`` violated: one violation per rule (the first found), in the order of
    the groups: pool bytes, link counts, link calls, allowed kinds, placement, authentication, timeouts."""
    subject = _Subject(merged, sides, usage)
    found: dict[str, Violation] = {}
    groups = itertools.chain(
        _pool_limits(limits, subject),
        _link_count_limits(limits, subject),
        _link_call_limits(limits, subject),
        _allowed_kinds(limits, subject),
        _placement_limits(limits, subject),
        _authentication(limits, subject, builtin=name == BUILTIN_POLICY),
        _timeout_limits(limits, subject),
    )
    for rule, message in groups:
        found.setdefault(rule, Violation(name, rule, message))
    return list(found.values())


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
    found.extend(_allow_list_problems(spec))
    return found


def _allow_list_problems(spec: models.CacheLinkPolicySpec) -> list[str]:
    """Allow-lists that allow nothing, or that the policy's own defaults break."""
    d, lim = spec.defaults, spec.limits
    found: list[str] = []
    if lim.allowed_link_styles is not None:
        if not lim.allowed_link_styles:
            found.append("limits.allowedLinkStyles is empty: no CacheLink can comply")
        elif d.link_style is not None and d.link_style not in lim.allowed_link_styles:
            found.append(f"defaults.linkStyle {d.link_style} is not in limits.allowedLinkStyles")
    if lim.allowed_listen_interfaces is not None:
        if not lim.allowed_listen_interfaces:
            found.append("limits.allowedListenInterfaces is empty: no CacheLink can comply")
        elif d.listen_interface is not None and d.listen_interface not in lim.allowed_listen_interfaces:
            found.append(
                f"defaults.listenInterface {d.listen_interface} is not in limits.allowedListenInterfaces"
            )
    if lim.allowed_nodes is not None and not lim.allowed_nodes:
        found.append("limits.allowedNodes is empty: no CacheLink can comply")
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
