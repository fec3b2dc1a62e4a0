"""Pure logic of the agent: state migration, token checks, metric accumulation, size parsing."""

from __future__ import annotations

import json

import pytest
from cachelink_agent import state, tokens
from cachelink_agent.auth import TokenChecker
from cachelink_agent.config import parse_size
from cachelink_agent.errors import ApiError
from cachelink_agent.metrics import Accumulator

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
    key = tokens.generate_signing_key()
    checker = TokenChecker(key.public_key(), "node-a", metrics_token=b"m" * 32)
    checker.check(f"Bearer {tokens.mint(key, 'node-a')}", "PUT", "/v1/instances/x")
    checker.check(f"Bearer {'m' * 32}", "GET", "/metrics")
    for header, path, status in [
        (None, "/v1/node", 401),
        ("Basic x", "/v1/node", 401),
        ("Bearer nope", "/v1/node", 401),
        (f"Bearer {tokens.mint(tokens.generate_signing_key(), 'node-a')}", "/v1/node", 401),
        (f"Bearer {tokens.mint(key, 'node-a', now=0)}", "/v1/node", 401),
        (f"Bearer {tokens.mint(key, 'node-b')}", "/v1/node", 403),
        (f"Bearer {'m' * 32}", "/v1/node", 403),
        (f"Bearer {'m' * 31}", "/metrics", 401),
    ]:
        with pytest.raises(ApiError) as raised:
            checker.check(header, "GET", path)
        assert raised.value.status == status, header


def test_minter_reuses_a_token_until_half_its_life_is_gone(monkeypatch) -> None:
    key = tokens.generate_signing_key()
    minter = tokens.Minter(key, lifetime_s=600)
    now = [1_000_000.0]
    monkeypatch.setattr(tokens.time, "time", lambda: now[0])
    first = minter.token("node-a")
    assert minter.token("node-a") == first and minter.token("node-b") != first
    now[0] += 299
    assert minter.token("node-a") == first
    now[0] += 2
    assert minter.token("node-a") != first


def test_keys_load_from_the_charts_pem_forms_only_when_ed25519() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tokens.generate_signing_key()
    assert tokens.load_signing_key(tokens.private_pem(key)).public_key() == key.public_key()
    assert tokens.load_verify_key(tokens.public_pem(key)) == key.public_key()
    with pytest.raises(ValueError, match="Ed25519"):
        tokens.load_signing_key(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                tokens.serialization.Encoding.PEM,
                tokens.serialization.PrivateFormat.PKCS8,
                tokens.serialization.NoEncryption(),
            )
        )
    with pytest.raises(ValueError, match="not a PEM"):
        tokens.load_verify_key(b"not a key")


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
