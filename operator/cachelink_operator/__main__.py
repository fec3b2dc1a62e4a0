"""``cachelink-operator``: parse flags, serve health and metrics, win the Lease, then run kopf.

The process exits non-zero when it loses the Lease, so its Deployment restarts it as a standby: a
replica never keeps acting on a Lease it no longer holds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import kopf
from aiohttp import web
from cachelink_agent import tokens
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_http_server

from cachelink_operator import (
    agent_certs,
    agents,
    handlers,
    kube,
    leader,
    link_keys,
    logs,
    policy_status,
    reconcile,
)
from cachelink_operator.config import Config
from cachelink_operator.no_diffbase import NoDiffBase

log = logging.getLogger("cachelink_operator")


def _selector(text: str) -> dict[str, str]:
    pairs = [part.split("=", 1) for part in text.split(",") if part]
    if any(len(p) != 2 or not p[0] for p in pairs):
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value[,key=value...]")
    return {k.strip(): v.strip() for k, v in pairs}


def _positive_int(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number in 1-256")
    return int(text)


def parse(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Flags -> ``Config`` (plus the process-level flags)."""
    d = Config()
    p = argparse.ArgumentParser(prog="cachelink-operator", description=__doc__)
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account)")
    p.add_argument("--agent-namespace", default=d.agent_namespace)
    p.add_argument(
        "--agent-selector", type=_selector, default=d.agent_selector, help="label selector of agent pods"
    )
    p.add_argument(
        "--agent-signing-key-secret",
        default=d.agent_signing_key_secret_name,
        help="Secret holding the Ed25519 key (PEM) that signs the agents' API tokens",
    )
    p.add_argument("--agent-signing-key-secret-key", default=d.agent_signing_key_key)
    p.add_argument(
        "--agent-ca-secret",
        default=d.agent_ca_secret_name,
        help="Secret (tls.crt, tls.key) of the CA that signs the agents' serving certificates and verifies "
        "agent connections; '' calls agents over plain HTTP and signs nothing",
    )
    p.add_argument(
        "--agent-service-account",
        default=d.agent_service_account,
        help="the agents' ServiceAccount: the only requester whose certificate requests are signed",
    )
    p.add_argument(
        "--link-master-secret",
        default=d.link_master_secret_name,
        help="Secret in the operator's namespace holding the master key of the link secrets",
    )
    p.add_argument("--link-master-secret-key", default=d.link_master_secret_key)
    p.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE") or d.operator_namespace,
        help="the operator's own namespace (its link master Secret's; default $POD_NAMESPACE)",
    )
    p.add_argument("--agent-timeout", type=float, default=d.agent_timeout_s, help="seconds per agent call")
    p.add_argument("--api-timeout", type=float, default=d.api_timeout_s, help="seconds per API request")
    p.add_argument(
        "--api-concurrency",
        type=_positive_int,
        default=d.api_concurrency,
        help="API requests of the operator's own in flight at once (kopf's watches are apart)",
    )
    p.add_argument(
        "--resync-interval", type=float, default=d.resync_interval_s, help="drift-repair period (s)"
    )
    p.add_argument("--retry-delay", type=float, default=d.retry_delay_s, help="first retry delay (s)")
    p.add_argument("--max-retry-delay", type=float, default=d.max_retry_delay_s)
    p.add_argument("--owner-confirm-interval", type=float, default=d.owner_confirm_interval_s)
    p.add_argument("--attach-socket", default=d.attach_socket, help="attach socket if the agent reports none")
    p.add_argument("--leader-namespace", default=os.environ.get("POD_NAMESPACE", d.leader_namespace))
    p.add_argument("--leader-lease", default=d.leader_lease)
    p.add_argument("--leader-duration", type=int, default=d.leader_duration_s)
    p.add_argument("--leader-renew", type=float, default=d.leader_renew_s)
    p.add_argument(
        "--identity", default=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    )
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics (0: off)")
    p.add_argument("--health-port", type=int, default=8081, help="/healthz and /readyz (0: off)")
    p.add_argument("--bind-address", default="0.0.0.0", help="address of the metrics and health ports")
    p.add_argument("--log-format", choices=["json", "plain"], default="json")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    cfg = Config(
        agent_namespace=a.agent_namespace,
        agent_selector=a.agent_selector,
        agent_signing_key_secret_name=a.agent_signing_key_secret,
        agent_signing_key_key=a.agent_signing_key_secret_key,
        agent_ca_secret_name=a.agent_ca_secret,
        agent_service_account=a.agent_service_account,
        link_master_secret_name=a.link_master_secret,
        link_master_secret_key=a.link_master_secret_key,
        operator_namespace=a.namespace,
        agent_timeout_s=a.agent_timeout,
        api_timeout_s=a.api_timeout,
        api_concurrency=a.api_concurrency,
        resync_interval_s=a.resync_interval,
        retry_delay_s=a.retry_delay,
        max_retry_delay_s=a.max_retry_delay,
        attach_socket=a.attach_socket,
        leader_namespace=a.leader_namespace,
        leader_lease=a.leader_lease,
        leader_duration_s=a.leader_duration,
        leader_renew_s=a.leader_renew,
        owner_confirm_interval_s=a.owner_confirm_interval,
        identity=a.identity,
    )
    return cfg, a


def connection_info(cfg: k8s.Configuration) -> kopf.ConnectionInfo:
    """kopf credentials from the client configuration loaded from ``--kubeconfig`` (or in-cluster).

    kopf's own login handlers load the ambient kubeconfig, not the file named by the flag, so the
    operator hands kopf exactly what its own API client uses.
    """
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def load_config(kubeconfig: str | None) -> None:
    """Load the API client's default configuration: the named kubeconfig, else in-cluster, else default."""
    if kubeconfig:
        k8s_config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        return
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # type: ignore[no-untyped-call]


def health_app(elector: leader.LeaderElector) -> web.Application:
    """``/healthz`` (the process serves) and ``/readyz`` (it reached the API: it leads or can take over).

    A standby replica is ready: were it not, a Deployment of two replicas would never be Available.
    Which replica leads is in the body of ``/readyz``, the ``cachelink_operator_leader`` gauge and the
    Lease itself.
    """

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if not elector.reached_api.is_set():
            return web.Response(text="starting: the API server was not reached yet", status=503)
        return web.Response(text="leading" if elector.leading.is_set() else "standby")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def _health(port: int, address: str, elector: leader.LeaderElector) -> web.AppRunner:
    runner = web.AppRunner(health_app(elector))
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner


def kopf_options(cfg: Config) -> dict[str, Any]:
    """How kopf runs: cluster-wide, standalone (the Lease elects), under the replica's own identity.

    kopf would otherwise derive its identity from ``getpass.getuser()``, which raises in a container
    whose uid has no passwd entry (the image runs as 65532).
    """
    return {"clusterwide": True, "standalone": True, "identity": cfg.identity}


def _api_client(cfg: Config, kubeconfig: str | None) -> k8s.ApiClient:
    """The API client, its connection pool as wide as the calls in flight (the Lease keeper's too)."""
    load_config(kubeconfig)
    settings = k8s.Configuration.get_default_copy()
    settings.connection_pool_maxsize = cfg.api_concurrency + 4
    return k8s.ApiClient(settings)


async def run(cfg: Config, args: argparse.Namespace) -> int:
    """Serve until stopped or the Lease is lost; returns the exit status."""
    api = _api_client(cfg, args.kubeconfig)
    kube_api = kube.Kube(api, cfg.api_timeout_s, cfg.api_concurrency)
    elector = leader.LeaderElector(
        k8s.CoordinationV1Api(api),
        cfg.leader_namespace,
        cfg.leader_lease,
        cfg.identity,
        cfg.leader_duration_s,
        cfg.leader_renew_s,
        cfg.api_timeout_s,
    )
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.bind_address)
    runner = await _health(args.health_port, args.bind_address, elector) if args.health_port else None
    try:
        await elector.acquire()
        made = await _runtime(cfg, kube_api)
        if made is None:
            return 2
        rt, registry = made
        stop: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        @kopf.on.login(registry=registry)
        def login(**_: object) -> kopf.ConnectionInfo:
            if args.kubeconfig is None:  # in-cluster: the projected token is rotated, so reload it
                load_config(None)
            return connection_info(k8s.Configuration.get_default_copy())

        @kopf.on.startup(registry=registry)
        def configure(settings: kopf.OperatorSettings, **_: object) -> None:
            settings.posting.level = logging.INFO
            settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="cachelink.io")
            settings.persistence.diffbase_storage = NoDiffBase()
            settings.persistence.finalizer = "cachelink.io/finalizer"
            settings.peering.standalone = True
            settings.networking.request_timeout = cfg.api_timeout_s
            settings.watching.server_timeout = 300
            settings.batching.error_delays = (1, 2, 5, 10, 30)

        operator = asyncio.create_task(kopf.operator(registry=registry, stop_flag=stop, **kopf_options(cfg)))
        keeper = asyncio.create_task(elector.keep())
        caretaking = asyncio.Event()
        caretaker = asyncio.create_task(handlers.caretaker(rt, caretaking))
        policy_statuses = asyncio.create_task(policy_status.run(kube_api, rt.board, caretaking))
        try:
            done, _ = await asyncio.wait({operator, keeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            caretaking.set()
            caretaker.cancel()
            policy_statuses.cancel()
        if keeper in done:
            log.error("lost the leader Lease; stopping")
            stop.set_result(True)
            await operator
            return 2
        keeper.cancel()
        await rt.agents.close()
        return 0
    finally:
        if runner is not None:
            await runner.cleanup()
        kube_api.close()
        api.close()  # type: ignore[no-untyped-call]


async def _runtime(
    cfg: Config, kube_api: kube.Kube
) -> tuple[reconcile.Runtime, kopf.OperatorRegistry] | None:
    """What the handlers share, and the registry they are in; None (after an error line naming the
    Secret) when the agents' signing key or the link master key cannot be read or is not a usable key."""

    async def read(what: str, namespace: str, name: str, key: str) -> bytes | None:
        try:
            return await kube_api.read_secret(namespace, name, key)
        except (ApiException, KeyError) as error:
            reason = error.reason if isinstance(error, ApiException) else f"no key {error}"
            log.error("cannot use the %s: Secret %s/%s, key %r: %s", what, namespace, name, key, reason)
            return None

    signing_pem = await read(
        "agent signing key", cfg.agent_namespace, cfg.agent_signing_key_secret_name, cfg.agent_signing_key_key
    )
    master = await read(
        "link master key", cfg.operator_namespace, cfg.link_master_secret_name, cfg.link_master_secret_key
    )
    if signing_pem is None or master is None:
        return None
    try:
        signing_key = tokens.load_signing_key(signing_pem)
    except ValueError as error:
        log.error(
            "cannot use the agent signing key: Secret %s/%s, key %r: %s",
            cfg.agent_namespace,
            cfg.agent_signing_key_secret_name,
            cfg.agent_signing_key_key,
            error,
        )
        return None
    try:
        link_master = link_keys.check_key(master, link_keys.MIN_MASTER_BYTES)
    except ValueError as error:
        log.error(
            "cannot use the link master key: Secret %s/%s, key %r: %s",
            cfg.operator_namespace,
            cfg.link_master_secret_name,
            cfg.link_master_secret_key,
            error,
        )
        return None
    signing_ca: agent_certs.SigningCA | None = None
    if cfg.agent_ca_secret_name:
        ca_pems = [
            await read("agent CA", cfg.agent_namespace, cfg.agent_ca_secret_name, key)
            for key in ("tls.crt", "tls.key")
        ]
        if ca_pems[0] is None or ca_pems[1] is None:
            return None
        try:
            signing_ca = agent_certs.SigningCA.from_pem(ca_pems[0], ca_pems[1])
        except ValueError as error:
            log.error(
                "cannot use the agent CA: Secret %s/%s: %s",
                cfg.agent_namespace,
                cfg.agent_ca_secret_name,
                error,
            )
            return None
    trusted = signing_ca.cert_pem if signing_ca is not None else None
    rt = reconcile.Runtime(
        cfg,
        kube_api,
        agents.Agents(signing_key, cfg.agent_timeout_s, trusted_ca_pem=trusted),
        link_master=link_master,
        signing_ca=signing_ca,
    )
    registry = kopf.OperatorRegistry()
    handlers.register(registry, rt)
    return rt, registry


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    cfg, args = parse(argv)
    logs.setup(args.log_format, args.verbose)
    return asyncio.run(run(cfg, args))


if __name__ == "__main__":
    sys.exit(main())
