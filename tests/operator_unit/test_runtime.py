"""What meeting a real cluster changed: status building, stale views, link secret, caretaker, login."""

from __future__ import annotations

import asyncio
from typing import Any

from cachelink_agent import models as agent_models
from cachelink_agent import tokens
from cachelink_operator import __main__ as main
from cachelink_operator import agent_certs, agents, desired, diff, handlers, reconcile, status
from cachelink_operator.config import Config
from cachelink_operator.models import CacheLinkStatus, RankTableStatus
from kubernetes import client as k8s

from .helpers import UID, compute, pod, running, spec

PODS = [pod("p0", "node-a", {"app": "p"}), pod("d0", "node-b", {"app": "d"})]


def _reported(want: desired.Desired, **kw: Any) -> dict[str, list[agent_models.InstanceStatus]]:
    out: dict[str, list[agent_models.InstanceStatus]] = {}
    for inst in want.instances.values():
        out.setdefault(inst.node, []).append(running(inst, **kw))
    return out


def _linked(want: desired.Desired, incarnation: int = 7) -> dict[str, list[agent_models.InstanceStatus]]:
    prompt = next(i for i in want.instances.values() if i.role.value == "Prompt")
    decode = next(i for i in want.instances.values() if i.role.value == "Decode")
    link = agent_models.LinkStatus(
        remote_cluster_id=prompt.cluster_id,
        address=prompt.endpoint or "",
        state="linked",
        data_path="tcp",
        last_status="LLM_SUCCESS",
        peer_incarnation=incarnation,
    )
    return {
        prompt.node: [running(prompt, incarnation=incarnation)],
        decode.node: [running(decode, links=[link])],
    }


def _build(
    previous: CacheLinkStatus, want: desired.Desired, planned: diff.Plan, outcomes=(), unreachable=None
):
    return status.build(previous, 1, want, planned, list(outcomes), unreachable or {}, [], None)


def _plan(want: desired.Desired, reported: Any) -> diff.Plan:
    return diff.plan(want, UID, reported, link_timeout_ms=3000, max_in_flight=4)


# --------------------------------------------------------------------------------- status building


def test_status_goes_pending_initialized_ready_with_one_transition_each():
    want = compute(spec(), PODS)
    first = _plan(want, {})
    new, transitions = _build(CacheLinkStatus(), want, first)
    assert new.phase == "Initializing" and [i.state for i in new.instances] == ["Pending", "Pending"]
    assert [(t.old, t.new) for t in transitions] == [(None, "Pending")]
    # same observation again: no new transition, same since
    again, transitions = _build(new, want, first)
    assert transitions == [] and again.links[0].since == new.links[0].since
    linked, transitions = _build(again, want, _plan(want, _linked(want)))
    assert linked.phase == "Ready" and linked.ready_links == 1 and linked.linked_links == 1
    assert [(t.old, t.new) for t in transitions] == [("Pending", "Linked")]
    assert linked.instances[0].incarnation == "7"
    ready = next(c for c in linked.conditions if c.type == "Ready")
    assert ready.status == "True" and ready.observed_generation == 1


def test_link_put_outcome_sets_state_and_counts_attempts():
    want = compute(spec(), PODS)
    planned = _plan(want, _reported(want))
    [action] = planned.actions
    ok = agents.Outcome(
        action,
        result=agent_models.PutResult(
            name=action.instance,
            action="linked",
            link=agent_models.LinkStatus(remote_cluster_id=1, address="a:1", state="linked"),
        ),
    )
    new, _ = _build(CacheLinkStatus(), want, planned, [ok])
    assert new.links[0].state == "Linked" and new.links[0].attempts == 1
    failed = agents.Outcome(action, "HTTP 424: link failed", 424, "LLM_LINK_FAILED")
    new, _ = _build(CacheLinkStatus(), want, planned, [failed])
    assert new.links[0].state == "Pending" and new.links[0].last_status_code == "LLM_LINK_FAILED"
    assert new.links[0].last_error == "HTTP 424: link failed"


def test_ready_counts_only_links_of_the_current_revision():
    pods = [
        pod("p-old", "node-a", {"app": "p", "pod-template-hash": "old"}, created="2025-01-01T00:00:00Z"),
        pod("p-new", "node-c", {"app": "p", "pod-template-hash": "new"}, created="2025-01-02T00:00:00Z"),
        pod("d0", "node-b", {"app": "d"}),
    ]
    want = compute(spec(), pods)
    reported = _reported(want)
    decode = next(i for i in want.instances.values() if i.role.value == "Decode")
    reported[decode.node] = [
        running(
            decode,
            links=[
                agent_models.LinkStatus(
                    remote_cluster_id=p.cluster_id,
                    address=p.endpoint or "",
                    state="linked",
                    peer_incarnation=7,
                )
                for p in want.instances.values()
                if p.role.value == "Prompt"
            ],
        )
    ]
    new, _ = _build(CacheLinkStatus(), want, _plan(want, reported))
    assert new.linked_links == 2 and new.ready_links == 1
    assert new.phase != "Ready"
    assert sorted(link.current for link in new.links) == [False, True]


def test_unreachable_agent_degrades():
    want = compute(spec(), PODS)
    new, _ = _build(
        CacheLinkStatus(), want, _plan(want, {}), unreachable={"node-a": "HTTP 401: invalid token"}
    )
    assert new.phase == "Degraded"
    bad = next(i for i in new.instances if i.node == "node-a")
    assert bad.state == "Unreachable" and bad.last_error == "HTTP 401: invalid token"


# --------------------------------------------------------------------------------- stale views


class _Kube:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch_status(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.patches.append(body)


def _runtime(kube: Any = None) -> reconcile.Runtime:
    return reconcile.Runtime(Config(), kube or _Kube(), agents.Agents(tokens.generate_signing_key(), 1.0))


def test_a_stale_view_of_our_own_write_is_not_built_on():
    rt = _runtime()
    body = {"metadata": {"namespace": "ns", "name": "cl", "uid": UID}, "status": {"phase": "Pending"}}
    new = CacheLinkStatus(phase="Ready")
    wrote = asyncio.run(reconcile._write_status(rt, body, CacheLinkStatus(phase="Pending"), new))
    assert wrote and rt.kube.patches[-1]["phase"] == "Ready"
    # the watch has not delivered our write yet: build on what we wrote
    assert reconcile._previous(rt, UID, {"phase": "Pending"}).phase == "Ready"
    # it has (or someone else wrote): build on what the object says
    assert reconcile._previous(rt, UID, {"phase": "Degraded"}).phase == "Degraded"
    rt.forget(UID)
    assert reconcile._previous(rt, UID, {"phase": "Pending"}).phase == "Pending"


def test_unchanged_status_is_not_written_and_removed_fields_are_nulled():
    rt = _runtime()
    body = {"metadata": {"namespace": "ns", "name": "cl", "uid": UID}}
    same = CacheLinkStatus(phase="Ready")
    assert not asyncio.run(reconcile._write_status(rt, body, same, same))
    old = CacheLinkStatus(phase="Ready", rank_table=RankTableStatus(config_map_name="c", hash="h"))
    assert asyncio.run(reconcile._write_status(rt, body, old, CacheLinkStatus(phase="Ready")))
    assert rt.kube.patches[-1]["rankTable"] is None


def test_failures_back_off_up_to_the_maximum():
    rt = _runtime()
    delays = [reconcile.failed(rt, UID, RuntimeError("409 Conflict")) for _ in range(8)]
    assert delays[0] == 2.0 and delays == sorted(delays) and delays[-1] == rt.config.max_retry_delay_s


def test_link_secret_is_an_engine_option():
    want = compute(spec(), PODS)
    assert all("cachelink.link_secret" not in i.options for i in want.instances.values())
    opts = desired.engine_options(
        desired.policy.BUILTIN_DEFAULTS, listen=None, host_id="node-a", link_secret="abc"
    )
    assert opts["cachelink.link_secret"] == "abc"
    assert "cachelink.pool_name" not in opts  # the agent manages pool names


# --------------------------------------------------------------------------------- caretaker


class _CareKube:
    def __init__(self, pods: list[dict[str, Any]], uids: list[str]) -> None:
        self.pods, self.uids = pods, uids
        self.calls: list[str] = []

    async def list_pods(self, namespace: str, labels: Any) -> list[dict[str, Any]]:
        self.calls.append("pods")
        return self.pods

    async def list_cachelink_uids(self) -> list[str]:
        self.calls.append("cachelinks")
        return self.uids


class _CareAgents:
    def __init__(self, instances: dict[str, list[agent_models.InstanceStatus]], kube: _CareKube) -> None:
        self.instances, self.kube = instances, kube
        self.confirmed: dict[str, list[str]] = {}
        self.executed: list[diff.Action] = []

    async def owners(self, endpoint: agents.Endpoint) -> dict[str, list[str]]:
        self.kube.calls.append(f"agent {endpoint.node}")
        held: dict[str, list[str]] = {}
        for inst in self.instances.get(endpoint.node, []):
            held.setdefault(inst.owner, []).append(inst.name)
        return held

    async def confirm_owners(self, endpoint: agents.Endpoint, owners: list[str]) -> None:
        self.confirmed[endpoint.node] = owners

    async def execute(self, actions: list[diff.Action], endpoints: Any, timeout: int) -> list[agents.Outcome]:
        self.executed.extend(actions)
        return [agents.Outcome(a) for a in actions]


def _agent_pod(node: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"agent-{node}"},
        "spec": {"nodeName": node, "containers": [{"ports": [{"name": "api", "containerPort": 8470}]}]},
        "status": {"podIP": ip},
    }


def test_caretaker_confirms_live_owners_and_sweeps_orphans_after_listing():
    want = compute(spec(), PODS)
    live = _reported(want)
    orphan = running(next(iter(want.instances.values())), owner="gone-uid")
    orphan = orphan.model_copy(update={"name": "orphan"})
    live["node-a"].append(orphan)
    kube = _CareKube([_agent_pod("node-a", "127.0.0.2"), _agent_pod("node-b", "127.0.0.3")], [UID])
    fake = _CareAgents(live, kube)
    rt = reconcile.Runtime(Config(), kube, fake)  # type: ignore[arg-type]
    asyncio.run(handlers.care(rt))
    # agents first, then the list of live owners
    assert kube.calls == ["pods", "agent node-a", "agent node-b", "cachelinks"]
    assert fake.confirmed == {"node-a": [UID], "node-b": [UID]}
    assert fake.executed == [diff.DeleteInstance("node-a", "orphan")]


# --------------------------------------------------------------------------------- login


def test_kopf_login_uses_the_loaded_configuration():
    cfg = k8s.Configuration()
    cfg.host = "https://127.0.0.1:6443"
    cfg.ssl_ca_cert = "/tmp/ca.crt"
    cfg.api_key = {"BearerToken": "abc"}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    info = main.connection_info(cfg)
    assert (info.server, info.ca_path, info.scheme, info.token) == (
        "https://127.0.0.1:6443",
        "/tmp/ca.crt",
        "Bearer",
        "abc",
    )
    assert not info.insecure


def test_bind_address_flag():
    _cfg, args = main.parse(["--bind-address=127.0.0.1"])
    assert args.bind_address == "127.0.0.1"


def test_a_link_whose_end_is_reinitialised_is_not_counted_linked():
    want = compute(spec(), PODS)
    reported = _linked(want)
    prompt = next(i for i in want.instances.values() if i.role.value == "Prompt")
    # the prompt instance runs with other options: it is re-put, so the link will be made again
    reported[prompt.node] = [running(prompt).model_copy(update={"options_sha256": "changed"})]
    new, _ = _build(CacheLinkStatus(), want, _plan(want, reported))
    assert new.links[0].state == "Pending" and new.ready_links == 0 and new.phase == "Initializing"


class _SecretKube:
    """read_secret of a kube client: the values of (namespace, name, key), else a missing key."""

    def __init__(self, values: dict[tuple[str, str, str], bytes]) -> None:
        self.values = values

    async def read_secret(self, namespace: str, name: str, key: str) -> bytes:
        return self.values[(namespace, name, key)]


CA = agent_certs.SigningCA.generate()


def _keys(
    cfg: Config, signing: bytes, master: bytes, ca: tuple[bytes, bytes] = (CA.cert_pem, CA.key_pem)
) -> dict[tuple[str, str, str], bytes]:
    return {
        (cfg.agent_namespace, cfg.agent_signing_key_secret_name, cfg.agent_signing_key_key): signing,
        (cfg.operator_namespace, cfg.link_master_secret_name, cfg.link_master_secret_key): master,
        (cfg.agent_namespace, cfg.agent_ca_secret_name, "tls.crt"): ca[0],
        (cfg.agent_namespace, cfg.agent_ca_secret_name, "tls.key"): ca[1],
    }


def test_the_operator_starts_only_with_an_ed25519_signing_key_and_a_long_master(caplog) -> None:
    cfg = Config()
    good_key, master = tokens.private_pem(tokens.generate_signing_key()), b"m" * 48
    made = asyncio.run(main._runtime(cfg, _SecretKube(_keys(cfg, good_key, master))))  # type: ignore[arg-type]
    assert made is not None
    asyncio.run(made[0].agents.close())
    for signing, secret_master, named in [
        (b"an HMAC secret of old", master, "agent signing key"),
        (good_key, b"short", "link master key"),
    ]:
        caplog.clear()
        kube = _SecretKube(_keys(cfg, signing, secret_master))
        assert asyncio.run(main._runtime(cfg, kube)) is None  # type: ignore[arg-type]
        assert f"cannot use the {named}" in caplog.text
    caplog.clear()
    assert asyncio.run(main._runtime(cfg, _SecretKube({}))) is None  # type: ignore[arg-type]
    assert "cachelink-agent-signing-key" in caplog.text and "no key" in caplog.text


def test_the_operator_signs_and_calls_agents_over_tls_only_with_a_fitting_ca(caplog) -> None:
    cfg = Config()
    signing, master = tokens.private_pem(tokens.generate_signing_key()), b"m" * 48
    made = asyncio.run(main._runtime(cfg, _SecretKube(_keys(cfg, signing, master))))  # type: ignore[arg-type]
    assert made is not None and made[0].signing_ca is not None
    assert made[0].signing_ca.cert_pem == CA.cert_pem and cfg.agent_scheme == "https"
    asyncio.run(made[0].agents.close())
    other = agent_certs.SigningCA.generate()
    for ca, needle in [((CA.cert_pem, other.key_pem), "does not belong"), ((b"", b""), "agent CA")]:
        caplog.clear()
        kube = _SecretKube(_keys(cfg, signing, master, ca))
        assert asyncio.run(main._runtime(cfg, kube)) is None  # type: ignore[arg-type]
        assert "cannot use the agent CA" in caplog.text and needle in caplog.text
    # without a CA Secret: plain HTTP to agents, and no signer
    plain = Config(agent_ca_secret_name="")
    made = asyncio.run(main._runtime(plain, _SecretKube(_keys(plain, signing, master))))  # type: ignore[arg-type]
    assert made is not None and made[0].signing_ca is None and plain.agent_scheme == "http"
    asyncio.run(made[0].agents.close())
