"""Link secrets derive from the operator's master key: no Secret of a tenant is stored or read."""

from __future__ import annotations

import pytest
from cachelink_operator import link_keys

MASTER = b"m" * 48


def test_the_same_cachelink_gets_the_same_secret_on_every_replica_and_restart() -> None:
    first = link_keys.link_secret(MASTER, "ns", "kv", "uid-1")
    assert first == link_keys.link_secret(bytes(MASTER), "ns", "kv", "uid-1")
    assert len(first) == 64 and int(first, 16) >= 0  # 256 bits, hex


@pytest.mark.parametrize(
    ("namespace", "name", "uid"),
    [("other", "kv", "uid-1"), ("ns", "other", "uid-1"), ("ns", "kv", "uid-2"), ("ns\0kv", "", "uid-1")],
)
def test_every_cachelink_gets_its_own_secret(namespace: str, name: str, uid: str) -> None:
    """Another namespace, name or uid (a re-created CacheLink) gives another secret; the fields are
    separated, so no two different triples share a message."""
    assert link_keys.link_secret(MASTER, namespace, name, uid) != link_keys.link_secret(
        MASTER, "ns", "kv", "uid-1"
    )


def test_another_master_gives_other_secrets() -> None:
    assert link_keys.link_secret(b"n" * 48, "ns", "kv", "u") != link_keys.link_secret(MASTER, "ns", "kv", "u")


def test_a_short_master_is_refused() -> None:
    assert link_keys.check_key(b"  " + MASTER + b"\n") == MASTER
    with pytest.raises(ValueError, match="at least 32"):
        link_keys.check_key(b"short")
