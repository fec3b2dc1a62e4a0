"""Errors of the development cluster; each message says what failed and which log file to read."""

from __future__ import annotations

from llm_datadist.status import CacheLinkError


class DevClusterError(CacheLinkError, RuntimeError):
    """Base class: the development cluster could not be built, started, stopped or reached."""


class PortInUseError(DevClusterError):
    """A loopback port that a component needs is taken by another process."""


class ComponentExitedError(DevClusterError):
    """A component process exited (or never became ready); the message names its log file."""
