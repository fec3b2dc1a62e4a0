"""What the node offers the operator: its interfaces and addresses, and its shared-memory capacity."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import socket
import struct
from pathlib import Path

from cachelink_agent import models

_SIOCGIFADDR = 0x8915
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1


def _ipv4_of(sock: socket.socket, name: str) -> str | None:
    request = struct.pack("256s", name.encode()[:15])
    try:
        reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
    except OSError:
        return None
    return socket.inet_ntoa(reply[20:24])


def _is_up(sock: socket.socket, name: str) -> bool:
    request = struct.pack("256s", name.encode()[:15])
    try:
        reply = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
    except OSError:
        return False
    (flags,) = struct.unpack("H", reply[16:18])
    return bool(flags & _IFF_UP)


def _ipv6_addresses() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            parts = line.split()
            if len(parts) == 6:
                address = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
                found.setdefault(parts[5], []).append(str(address))
    return found


def interfaces() -> list[models.InterfaceInfo]:
    """Every interface with its IPv4 (primary) and IPv6 addresses."""
    ipv6 = _ipv6_addresses()
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            addresses = [a for a in [_ipv4_of(sock, name)] if a] + ipv6.get(name, [])
            out.append(models.InterfaceInfo(name=name, addresses=addresses, up=_is_up(sock, name)))
    return out


def candidate_addresses(found: list[models.InterfaceInfo]) -> list[str]:
    """Addresses the operator may give peers: up, not loopback, not link-local."""
    out = []
    for interface in found:
        if not interface.up:
            continue
        for text in interface.addresses:
            address = ipaddress.ip_address(text)
            if not (address.is_loopback or address.is_link_local or address.is_unspecified):
                out.append(text)
    return out


def shm_capacity(path: str) -> tuple[int, int]:
    """(capacity, free) bytes of the filesystem holding the pool files."""
    stat = os.statvfs(path)
    return stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize
