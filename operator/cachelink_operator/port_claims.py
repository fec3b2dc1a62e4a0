"""Listen ports this operator has handed out, per node, so CacheLinks reconciled at the same time never
pick the same port: the agents report a new instance's port only once it exists, too late for a
CacheLink reconciled a moment later."""

from __future__ import annotations

from collections.abc import Iterable


class PortClaims:
    """Per node, which CacheLink (by UID) holds each port; lives as long as the operator process."""

    def __init__(self) -> None:
        self._by_uid: dict[str, dict[str, set[int]]] = {}
        self._foreign: dict[str, set[int]] = {}

    def mark_foreign(self, node: str, port: int) -> None:
        """Something outside this operator holds ``port`` on ``node`` (an init failed with "Address
        already in use"): avoided from now on, by every CacheLink."""
        self._foreign.setdefault(node, set()).add(port)

    def held_by_others(self, uid: str) -> dict[str, set[int]]:
        """Per node, the ports claimed by every CacheLink but ``uid``, and those held outside."""
        held: dict[str, set[int]] = {node: set(ports) for node, ports in self._foreign.items()}
        for owner, nodes in self._by_uid.items():
            if owner != uid:
                for node, ports in nodes.items():
                    held.setdefault(node, set()).update(ports)
        return held

    def claim(self, uid: str, ports: Iterable[tuple[str, int]]) -> None:
        """``uid`` now holds exactly these ``(node, port)`` pairs."""
        nodes: dict[str, set[int]] = {}
        for node, port in ports:
            nodes.setdefault(node, set()).add(port)
        self._by_uid[uid] = nodes

    def release(self, uid: str) -> None:
        """``uid`` holds nothing any more (deleted, or its daemon stopped)."""
        self._by_uid.pop(uid, None)
