"""``cachelink-agent``: wire config, logging, the instance manager and the HTTP server; run until signalled.

SIGTERM/SIGINT stop cleanly *without* finalizing (a DaemonSet restart resumes every instance); only a
DELETE finalizes. A bad flag or an unreadable state file exits with status 2 and one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from cachelink_agent import config as config_module
from cachelink_agent import logs, metrics, server, serving_cert, state
from cachelink_agent.csi.folders import Folders
from cachelink_agent.csi.plugin import CsiPlugin
from cachelink_agent.csi.service import CsiServer, CsiStartError
from cachelink_agent.csi.volumes import VolumeStore
from cachelink_agent.instances import InstanceManager

_log = logging.getLogger("cachelink_agent")


async def serve(config: config_module.AgentConfig) -> None:
    """Restore state, serve the API, and wait for SIGTERM/SIGINT."""
    manager_box: list[InstanceManager] = []
    registry = metrics.AgentMetrics(lambda: manager_box[0].metric_snapshots() if manager_box else [])
    manager = InstanceManager(config, registry)
    manager_box.append(manager)
    manager.store.load()  # fail fast on an unreadable or newer state file, before binding anything
    csi = _csi(config, manager)
    tls, renewal = await _tls(config)
    app = server.create_app(config, manager, registry)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site: web.BaseSite
    if config.listen_unix:
        site = web.UnixSite(runner, config.listen_unix, ssl_context=tls)
    else:
        site = web.TCPSite(runner, config.listen_host, config.listen_port, ssl_context=tls)
    await site.start()
    _log.info(
        "cachelink-agent %s on node %s listening on %s (%s mode, state %s)",
        __import__("cachelink_agent").__version__,
        config.node_name,
        site.name,
        config.mode,
        config.state_dir,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if csi is not None:
        await csi.start()
    restore = asyncio.create_task(manager.restore())
    await stop.wait()
    _log.info("stopping (instances keep their pools; nothing is finalized)")
    if csi is not None:
        await csi.stop(grace=1.0)  # published volumes stay mounted; the next agent serves them
    for task in (restore, renewal):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await manager.shutdown()
    await runner.cleanup()


async def _tls(config: config_module.AgentConfig) -> tuple[ssl.SSLContext | None, asyncio.Task[None] | None]:
    """The server's TLS context (from files, or signed through the CSR API and renewed), or None."""
    if not config.tls_csr_address:
        return config.ssl_context(), None
    cert = serving_cert.ServingCert(
        config.state_dir / "tls",
        config.node_name,
        config.tls_csr_address,
        serving_cert.KubernetesCsrApi(),
        timeout_s=config.tls_csr_timeout,
        lifetime_s=config.tls_cert_lifetime,
    )
    if not cert.load_existing():
        _log.info("requesting a serving certificate for %s (%s)", config.node_name, config.tls_csr_address)
        await cert.obtain()
    return cert.context, asyncio.create_task(cert.renew_forever())


def _csi(config: config_module.AgentConfig, manager: InstanceManager) -> CsiServer | None:
    """The CSI node plugin, its published volumes restored, when ``--csi-socket`` is set."""
    if not config.csi_socket:
        return None
    plugin = CsiPlugin(
        Folders(config.run_dir),
        VolumeStore(config.state_dir),
        manager.granting,
        manager.sync_pod_sockets,
        config.csi_grant_wait,
        config.node_name,
        config.kubelet_dir,
    )
    plugin.restore()
    manager.pod_sockets_of = plugin.pod_sockets_of
    return CsiServer(
        plugin,
        lambda: manager.ready,
        Path(config.csi_socket),
        config.kubelet_dir,
        config.csi_driver,
        config.csi_register,
    )


def main(argv: list[str] | None = None) -> None:
    """Console script entry point."""
    try:
        config = config_module.from_args(argv)
    except config_module.ConfigError as error:
        print(f"cachelink-agent: error: {error}", file=sys.stderr)
        sys.exit(2)
    logs.setup(config.log_format, config.log_level)
    try:
        asyncio.run(serve(config))
    except (state.StateError, CsiStartError, serving_cert.ServingCertError) as error:
        print(f"cachelink-agent: error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        print(f"cachelink-agent: error: cannot serve on the --listen address: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
