"""Pure logic of the agent: state migration, token checks, metric accumulation, size parsing."""

from __future__ import annotations

import json

import pytest
from cachelink_agent import state
from cachelink_agent.auth import TokenChecker
from cachelink_agent.config import parse_size
from cachelink_agent.errors import ApiError
from cachelink_agent.metrics import Accumulator
from cachelink_agent.tokens import node_token

V1 = {
    "version": 1,
    "instances": [
        {
            "name": "p0",
            "role": "prompt",
            "cluster_id": 1,
            "owner": "u",
            "options": {"ge.exec.deviceId": "0"},
            "links": [{"remote_cluster_id": 2, "remote_address": "10.0.0.2:26000"}],
        },
    ],
}


def test_v1_state_migrates_forward(tmp_path) -> None:
    (tmp_path / "state.json").write_text(json.dumps(V1))
    store = state.StateStore(tmp_path)
    loaded = store.load()
    assert loaded.schema_version == state.SCHEMA_VERSION
    record = loaded.instances["p0"]
    assert record.instance_spec().cluster_id == 1
    assert record.links["2"].remote_address == "10.0.0.2:26000" and record.links["2"].timeout_ms == 3000
    store.save(loaded)
    assert json.loads((tmp_path / "state.json").read_text())["schema_version"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp files left


@pytest.mark.parametrize(
    "text", ["{", "[]", '{"schema_version": 0}', '{"schema_version": 2, "instances": 5}']
)
def test_unreadable_state_is_a_clear_error(tmp_path, text) -> None:
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(state.StateError):
        state.StateStore(tmp_path).load()


def test_token_checker() -> None:
    secret = b"s" * 32
    checker = TokenChecker(secret, "node-a")
    checker.check(f"Bearer {node_token(secret, 'node-a')}")
    for header, status in [
        (None, 401),
        ("Basic x", 401),
        ("Bearer nope", 401),
        (f"Bearer {node_token(b'x' * 32, 'node-b')}", 401),
        (f"Bearer {node_token(secret, 'node-b')}", 403),
    ]:
        with pytest.raises(ApiError) as raised:
            checker.check(header)
        assert raised.value.status == status, header


def test_accumulator_survives_restarts() -> None:
    acc = Accumulator()
    acc.feed("a", "bytes", 1, 10)
    acc.feed("a", "bytes", 1, 25)
    acc.feed("a", "bytes", 2, 5)  # new incarnation: counters restarted
    acc.feed("b", "bytes", 7, 1)
    assert acc.total("bytes") == 31


def test_parse_size() -> None:
    assert parse_size("1Gi") == 1 << 30 and parse_size("512Mi") == 512 << 20 and parse_size("100") == 100
    with pytest.raises(ValueError, match="not a size"):
        parse_size("much")


def test_status_redacts_secrets_but_digests_them():
    from cachelink_agent import models

    options = {"ge.exec.deviceId": "0", "cachelink.link_secret": "hunter2hunter2"}
    shown = models.redact_options(options)
    assert shown["cachelink.link_secret"] == models.REDACTED and shown["ge.exec.deviceId"] == "0"
    other = {**options, "cachelink.link_secret": "another-secret"}
    assert models.options_digest(options) != models.options_digest(other), (
        "a changed secret is still a change"
    )
    assert models.options_digest(options) == models.options_digest(dict(reversed(list(options.items()))))
