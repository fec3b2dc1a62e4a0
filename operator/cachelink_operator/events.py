"""Kubernetes Events about CacheLinks: one reason per kind of action or failure.

Posted through kopf's event queue (``kopf.event``), so posting never blocks a reconcile; kopf's own
per-handler events are switched off in settings, so these are the only ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

# reasons (CamelCase, as Kubernetes conventions want)
INSTANCE_INITIALIZED = "InstanceInitialized"
INSTANCE_DELETED = "InstanceDeleted"
INSTANCE_FAILED = "InstanceFailed"
LINK_TRANSITION = "LinkStateChanged"
AGENT_UNREACHABLE = "AgentUnreachable"
POLICY_VIOLATION = "PolicyViolation"
REJECTED = "Rejected"
POD_CLAIMED = "PodClaimed"
FINALIZE_TIMEOUT = "FinalizeTimedOut"
FINALIZED = "Finalized"
READY = "Ready"


def normal(body: Mapping[str, Any], reason: str, message: str) -> None:
    """A Normal event on ``body``."""
    kopf.event(cast(kopf.Body, body), type="Normal", reason=reason, message=message[:1024])


def warning(body: Mapping[str, Any], reason: str, message: str) -> None:
    """A Warning event on ``body``."""
    kopf.event(cast(kopf.Body, body), type="Warning", reason=reason, message=message[:1024])
