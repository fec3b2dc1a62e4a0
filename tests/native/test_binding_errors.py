"""The binding raises ``CoreError(code, message)`` for every failed call, ``link`` and ``unlink`` included.

They used to return ``(code, message)``; ``LLMDataDist.link_clusters``/``unlink_clusters`` now catch the
error per cluster and still return the per-cluster codes (tests/native/test_errors.py checks those).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from llm_datadist import _native


def _engine(cluster_id: int, listen: bool = False) -> _native.Engine:
    config = _native.EngineConfig()
    config.cluster_id = cluster_id
    if listen:
        config.listen_ip = "127.0.0.1"
    engine = _native.Engine(config)
    engine.init()
    return engine


@pytest.fixture
def engine() -> Iterator[_native.Engine]:
    engine = _engine(77)
    yield engine
    engine.finalize(True)


def test_unlink_of_an_unlinked_cluster_raises(engine):
    with pytest.raises(_native.CoreError) as err:
        engine.unlink(5, False)
    code, message = err.value.args
    assert code == _native.Code.NOT_YET_LINK
    assert "cluster 5 is not linked" in message


def test_link_to_a_closed_port_raises(engine):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(_native.CoreError) as err:
        engine.link(1, "127.0.0.1", port, 500)
    assert err.value.args[0] == _native.Code.LINK_FAILED


def test_link_and_unlink_return_nothing_on_success(engine):
    peer = _engine(78, listen=True)
    try:
        ip, port = peer.listen_address.rsplit(":", 1)
        assert engine.link(78, ip, int(port), 2000) is None
        with pytest.raises(_native.CoreError) as err:
            engine.link(78, ip, int(port), 2000)
        assert err.value.args[0] == _native.Code.ALREADY_LINK
        assert engine.unlink(78, False) is None
    finally:
        peer.finalize(True)
