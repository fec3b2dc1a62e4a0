"""The link-security and listener options (issue 14): defaults, validation, the key each error names."""

from __future__ import annotations

import pytest

from llm_datadist.ext.options import CACHELINK_OPTIONS, InvalidOption, engine_settings
from llm_datadist.status import LLMStatusCode

NEW_KEYS = (
    "cachelink.link_encryption",
    "cachelink.max_server_connections",
    "cachelink.max_connections_per_source",
    "cachelink.handshake_timeout_ms",
    "cachelink.idle_timeout_ms",
)


def settings(**options: str):
    return engine_settings(options, 1, "Prompt")


def test_defaults():
    s = settings()
    assert (s.link_secret, s.link_encryption) == ("", False)
    assert (s.max_server_connections, s.max_connections_per_source) == (2048, 256)
    assert (s.handshake_timeout_ms, s.idle_timeout_ms) == (10000, 600000)


def test_every_new_key_is_documented():
    assert set(NEW_KEYS) <= set(CACHELINK_OPTIONS)


def test_encryption_with_a_secret():
    s = engine_settings({"cachelink.link_secret": "k", "cachelink.link_encryption": "1"}, 1, "Prompt")
    assert s.link_encryption


def test_encryption_without_a_secret_names_the_key():
    with pytest.raises(InvalidOption) as err:
        engine_settings({"cachelink.link_encryption": "1"}, 1, "Prompt")
    assert err.value.key == "cachelink.link_encryption"
    assert err.value.status_code == LLMStatusCode.LLM_PARAM_INVALID
    assert "cachelink.link_secret" in str(err.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cachelink.link_encryption", "yes"),
        ("cachelink.max_server_connections", "0"),
        ("cachelink.max_connections_per_source", "-1"),
        ("cachelink.handshake_timeout_ms", "0"),
        ("cachelink.idle_timeout_ms", "soon"),
    ],
)
def test_bad_values_name_their_key(key, value):
    with pytest.raises(InvalidOption) as err:
        engine_settings({"cachelink.link_secret": "k", key: value}, 1, "Prompt")
    assert err.value.key == key


def test_idle_timeout_zero_means_never():
    assert engine_settings({"cachelink.idle_timeout_ms": "0"}, 1, "Prompt").idle_timeout_ms == 0
