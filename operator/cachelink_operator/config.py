"""The operator's settings (from command-line flags); every timeout is bounded and settable."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Config:
    """What ``__main__`` parses and the handlers read."""

    agent_namespace: str = "cachelink-system"
    agent_selector: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/component": "agent"})
    #: the Secret (in the agents' namespace) holding the Ed25519 key that signs the agents' tokens
    agent_signing_key_secret_name: str = "cachelink-agent-signing-key"  # noqa: S105 - a Secret's name
    agent_signing_key_key: str = "key.pem"
    #: the Secret (in the agents' namespace; tls.crt, tls.key) of the CA that signs the agents' serving
    #: certificates (signer cachelink.io/agent-serving) and that agent connections are verified with;
    #: empty: agents are called over plain HTTP and no certificate is signed
    agent_ca_secret_name: str = "cachelink-agent-ca"  # noqa: S105 - a Secret's name
    #: the agents' ServiceAccount (in the agents' namespace): only it may request agent certificates
    agent_service_account: str = "cachelink-agent"
    #: the Secret (in the operator's namespace) holding the master key link secrets derive from
    link_master_secret_name: str = "cachelink-link-master"  # noqa: S105 - a Secret's name, not a secret
    link_master_secret_key: str = "master"  # noqa: S105 - a key name in that Secret
    operator_namespace: str = "cachelink-system"
    agent_timeout_s: float = 10.0
    api_timeout_s: float = 15.0
    api_concurrency: int = 16
    resync_interval_s: float = 60.0
    retry_delay_s: float = 1.0
    max_retry_delay_s: float = 30.0
    attach_socket: str = "/run/cachelink/agent.sock"
    leader_namespace: str = "cachelink-system"
    leader_lease: str = "cachelink-operator"
    leader_duration_s: int = 15
    leader_renew_s: float = 5.0
    owner_confirm_interval_s: float = 30.0
    identity: str = ""

    @property
    def agent_scheme(self) -> str:
        """How agents are called: HTTPS when their certificates are signed by the CA, else plain HTTP."""
        return "https" if self.agent_ca_secret_name else "http"

    @property
    def agent_user(self) -> str:
        """The user name the API server gives the agents' ServiceAccount."""
        return f"system:serviceaccount:{self.agent_namespace}:{self.agent_service_account}"
