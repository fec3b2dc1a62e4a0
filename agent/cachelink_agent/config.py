"""Command line of ``cachelink-agent``: every flag checked up front, a clear message for each mistake."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cachelink_agent import models, serving_cert, tokens
from llm_datadist.status import CacheLinkError

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MIN_METRICS_TOKEN_BYTES = 32
_SIZE = re.compile(r"^(\d+)\s*([KMGT]i?)?B?$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
    "ti": 1 << 40,
}


class ConfigError(CacheLinkError):
    """A flag's value is unusable; the message says which flag and why."""


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings, after validation."""

    listen_host: str
    listen_port: int
    listen_unix: str
    #: PEM public key or certificate checking the operator's tokens
    verify_key_file: str
    #: the metrics-only credential, if any
    metrics_token: bytes | None
    state_dir: Path
    run_dir: Path
    pool_dir: Path
    node_name: str
    host_id: str
    tls_cert: str
    tls_key: str
    in_process: bool
    max_pool_bytes: int
    owner_ttl: float
    owner_finalize_ttl: float
    lease_seconds: float
    max_lease_seconds: float
    max_body_bytes: int
    request_timeout: float
    worker_start_timeout: float
    restart_backoff_max: float
    reconcile_interval: float
    log_format: str
    log_level: str
    csi_socket: str = ""
    kubelet_dir: Path = Path("/var/lib/kubelet")
    csi_driver: str = "cachelink.io"
    csi_register: bool = True
    csi_grant_wait: float = 10.0
    #: get the serving certificate from the operator through the CSR API (for this address)
    tls_csr_address: str = ""
    tls_csr_timeout: float = 300.0
    tls_cert_lifetime: int = 7 * 24 * 3600

    def ssl_context(self) -> ssl.SSLContext | None:
        """Server TLS context from the cert/key files, or None."""
        if not self.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    @property
    def mode(self) -> models.Mode:
        """ "in-process" or "worker"."""
        return "in-process" if self.in_process else "worker"


def parse_size(text: str) -> int:
    """``1073741824``, ``1Gi``, ``512Mi``, ``2G``: bytes."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (use bytes or a suffix like 512Mi, 8Gi)")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise ValueError("must be a finite number > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used for --help)."""
    parser = argparse.ArgumentParser(
        prog="cachelink-agent",
        description="Node agent of CacheLink: owns this node's LLMDataDist instances and serves them to the "
        "operator (HTTP API) and to workloads (attach sockets).",
    )
    add = parser.add_argument
    add(
        "--listen", default="0.0.0.0:8470", help="API address: host:port or unix:/path (default 0.0.0.0:8470)"
    )
    add(
        "--verify-key-file",
        required=True,
        help="PEM Ed25519 public key or certificate checking the operator's tokens (re-read on change)",
    )
    add(
        "--metrics-token-file",
        default="",
        help="file holding a metrics-only bearer credential (GET /metrics only; at least 32 bytes)",
    )
    add("--state-dir", required=True, help="directory of the desired-state file and attach leases")
    add("--run-dir", required=True, help="directory of the per-instance attach sockets")
    add("--pool-dir", default="/dev/shm", help="directory of the shared-memory pool files (default /dev/shm)")
    add(
        "--node-name",
        default=os.environ.get("NODE_NAME", ""),
        help="this node's name (default $NODE_NAME, else the host name)",
    )
    add(
        "--host-id", default="", help="same-host identity given to instances (default: the machine's boot id)"
    )
    add("--tls-cert", default="", help="serve HTTPS with this certificate (PEM)")
    add("--tls-key", default="", help="private key of --tls-cert (PEM)")
    add(
        "--tls-csr-address",
        default="",
        help="serve HTTPS with a certificate for this IP, made here and signed by the CacheLink operator "
        "through the CSR API (signer cachelink.io/agent-serving; the key stays in --state-dir/tls)",
    )
    add("--tls-csr-timeout", default="300", help="seconds to wait for the certificate to be signed")
    add("--tls-cert-lifetime", default="604800", help="seconds a requested certificate lasts (>= 600)")
    add(
        "--in-process",
        action="store_true",
        help="run instances inside the agent (density) instead of one worker process each (isolation)",
    )
    add(
        "--max-pool-bytes",
        default="",
        help="shared-memory budget of all pools (e.g. 8Gi; default: the size of --pool-dir)",
    )
    add(
        "--owner-ttl",
        default="900",
        help="seconds without its owner being reconfirmed before an instance is quarantined "
        "(no new links or attach sessions)",
    )
    add(
        "--owner-finalize-ttl",
        default="3600",
        help="seconds without its owner being reconfirmed before a quarantined instance is finalized",
    )
    add("--lease-seconds", default="30", help="default lease of an attach session")
    add("--max-lease-seconds", default="600", help="longest lease a workload may ask for")
    add("--max-body-bytes", default="1048576", help="largest request body accepted")
    add("--request-timeout", default="30", help="bound (s) of engine calls made for one request")
    add("--worker-start-timeout", default="60", help="bound (s) of a worker's start and init")
    add("--restart-backoff-max", default="30", help="longest wait (s) between worker restarts")
    add("--reconcile-interval", default="5", help="seconds between attempts to restore broken links")
    add(
        "--csi-socket",
        default="",
        help="serve the CSI node plugin (per-pod attach folders) on this Unix socket; the path must be the "
        "same for the kubelet (default: no CSI plugin)",
    )
    add(
        "--kubelet-dir",
        default="/var/lib/kubelet",
        help="the kubelet's root directory (CSI targets, plugins)",
    )
    add("--csi-driver-name", default="cachelink.io", help="CSI driver name (the CSIDriver object's name)")
    add(
        "--csi-register",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="register with the kubelet through <kubelet-dir>/plugins_registry/<driver>-reg.sock",
    )
    add(
        "--csi-grant-wait",
        default="10",
        help="seconds a volume publish waits for its CacheLink's grant before it is refused",
    )
    add("--log-format", choices=("text", "json"), default="text", help="log format (default text)")
    add("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO", type=str.upper)
    return parser


def _dir(flag: str, value: str, mode: int) -> Path:
    path = Path(value).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as error:
        raise ConfigError(f"{flag} {value}: cannot create it: {error.strerror}") from None
    if not path.is_dir():
        raise ConfigError(f"{flag} {value}: not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {value}: not writable by this user")
    return path


def _private(path: Path) -> None:
    """Make an agent-owned folder 0700; a shared sticky folder (``/dev/shm`` itself) is left as it is."""
    mode = path.stat().st_mode
    if not mode & stat.S_ISVTX and stat.S_IMODE(mode) != 0o700:
        try:
            path.chmod(0o700)
        except OSError as error:
            raise ConfigError(f"{path}: cannot make it private (0700): {error.strerror}") from None


def _number(flag: str, text: str) -> float:
    try:
        return _positive(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a positive number, got {text!r}") from None


def _listen(text: str) -> tuple[str, int, str]:
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ConfigError(f"--listen {text}: a unix socket needs an absolute path")
        return "", 0, path
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen must be host:port (port 0-65535) or unix:/path, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port_text), ""


def _verify_key(path: str) -> None:
    try:
        tokens.load_verify_key(Path(path).read_bytes())
    except OSError as error:
        raise ConfigError(f"--verify-key-file {path}: {error.strerror}") from None
    except ValueError as error:
        raise ConfigError(f"--verify-key-file {path}: {error}") from None


def _metrics_token(path: str) -> bytes:
    try:
        token = Path(path).read_bytes().strip()
    except OSError as error:
        raise ConfigError(f"--metrics-token-file {path}: {error.strerror}") from None
    if len(token) < MIN_METRICS_TOKEN_BYTES:
        raise ConfigError(f"--metrics-token-file {path}: the credential must be at least 32 bytes")
    return token


def _tls_files(cert: str, key: str) -> None:
    if bool(cert) != bool(key):
        raise ConfigError("--tls-cert and --tls-key go together")
    for flag, value in (("--tls-cert", cert), ("--tls-key", key)):
        if value and not os.access(value, os.R_OK):
            raise ConfigError(f"{flag} {value}: not readable")


def _tls_csr(address: str, cert: str, lifetime: int) -> None:
    if cert:
        raise ConfigError(
            "--tls-csr-address and --tls-cert exclude each other (one source of the certificate)"
        )
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"--tls-csr-address {address!r} is not an IP address") from None
    if lifetime < serving_cert.MIN_LIFETIME_S:
        raise ConfigError(
            f"--tls-cert-lifetime must be at least {serving_cert.MIN_LIFETIME_S} s (the CSR API's minimum)"
        )


def _max_pool(text: str, pool_dir: Path) -> int:
    """``--max-pool-bytes``, or the size of the pool folder's file system when it is not given."""
    if not text:
        found = os.statvfs(pool_dir)
        return found.f_blocks * found.f_frsize
    try:
        return parse_size(text)
    except ValueError as error:
        raise ConfigError(f"--max-pool-bytes: {error}") from None


def from_args(argv: list[str] | None = None) -> AgentConfig:
    """Parse and validate; raises ``ConfigError`` (argparse itself exits on unknown flags)."""
    args = build_parser().parse_args(argv)
    host, port, unix_path = _listen(args.listen)
    _verify_key(args.verify_key_file)
    metrics_token = _metrics_token(args.metrics_token_file) if args.metrics_token_file else None
    node = args.node_name or socket.gethostname()
    if len(node) > 253 or not DNS1123_SUBDOMAIN.match(node):
        raise ConfigError(f"--node-name {node!r} is not a DNS-1123 subdomain (a Kubernetes node name)")
    _tls_files(args.tls_cert, args.tls_key)
    lifetime = int(_number("--tls-cert-lifetime", args.tls_cert_lifetime))
    if args.tls_csr_address:
        _tls_csr(args.tls_csr_address, args.tls_cert, lifetime)
    owner_ttl = _number("--owner-ttl", args.owner_ttl)
    owner_finalize_ttl = _number("--owner-finalize-ttl", args.owner_finalize_ttl)
    if owner_finalize_ttl < owner_ttl:
        raise ConfigError("--owner-finalize-ttl must be at least --owner-ttl (quarantine comes first)")
    pool_dir = _dir("--pool-dir", args.pool_dir, 0o700)
    _private(pool_dir)  # workloads get pools as file descriptors, never by path
    for flag, value in (("--csi-socket", args.csi_socket), ("--kubelet-dir", args.kubelet_dir)):
        if value and not value.startswith("/"):
            raise ConfigError(f"{flag} {value}: needs an absolute path")
    if len(args.csi_driver_name) > 63 or not DNS1123_SUBDOMAIN.match(args.csi_driver_name):
        raise ConfigError(f"--csi-driver-name {args.csi_driver_name!r} is not a DNS-1123 subdomain of <= 63")
    max_pool = _max_pool(args.max_pool_bytes, pool_dir)
    max_body = int(_number("--max-body-bytes", args.max_body_bytes))
    config = AgentConfig(
        listen_host=host,
        listen_port=port,
        listen_unix=unix_path,
        verify_key_file=args.verify_key_file,
        metrics_token=metrics_token,
        state_dir=_dir("--state-dir", args.state_dir, 0o700),
        run_dir=_dir("--run-dir", args.run_dir, 0o755),
        pool_dir=pool_dir,
        node_name=node,
        host_id=args.host_id,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        in_process=args.in_process,
        max_pool_bytes=max_pool,
        owner_ttl=owner_ttl,
        owner_finalize_ttl=owner_finalize_ttl,
        lease_seconds=_number("--lease-seconds", args.lease_seconds),
        max_lease_seconds=_number("--max-lease-seconds", args.max_lease_seconds),
        max_body_bytes=max_body,
        request_timeout=_number("--request-timeout", args.request_timeout),
        worker_start_timeout=_number("--worker-start-timeout", args.worker_start_timeout),
        restart_backoff_max=_number("--restart-backoff-max", args.restart_backoff_max),
        reconcile_interval=_number("--reconcile-interval", args.reconcile_interval),
        log_format=args.log_format,
        log_level=args.log_level,
        csi_socket=args.csi_socket,
        kubelet_dir=Path(os.path.normpath(args.kubelet_dir)),  # as the kubelet names it: not resolved
        csi_driver=args.csi_driver_name,
        csi_register=args.csi_register,
        csi_grant_wait=_number("--csi-grant-wait", args.csi_grant_wait),
        tls_csr_address=args.tls_csr_address,
        tls_csr_timeout=_number("--tls-csr-timeout", args.tls_csr_timeout),
        tls_cert_lifetime=lifetime,
    )
    if config.tls_cert:
        try:
            config.ssl_context()
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"--tls-cert/--tls-key cannot be loaded: {error}") from None
    return config
