"""LLMStatusCode, LLMException, Status and the core-code mapping."""

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_datadist.status import (
    LLMException,
    LLMStatusCode,
    Status,
    code_2_status,
    code_from_int,
    handle_llm_status,
    raise_if_false,
    raise_if_true,
    raise_status,
)

BASE = 0x5010B000

EXPECTED_CODES = [
    ("LLM_SUCCESS", 0),
    ("LLM_FAILED", 0xFFFFFFFF),
    ("LLM_PARAM_INVALID", BASE + 5),
    ("LLM_WAIT_PROCESS_TIMEOUT", BASE + 1),
    ("LLM_KV_CACHE_NOT_EXIST", BASE + 2),
    ("LLM_REPEAT_REQUEST", BASE + 3),
    ("LLM_REQUEST_ALREADY_COMPLETED", BASE + 4),
    ("LLM_ENGINE_FINALIZED", BASE + 6),
    ("LLM_NOT_YET_LINK", BASE + 7),
    ("LLM_ALREADY_LINK", BASE + 8),
    ("LLM_LINK_FAILED", BASE + 9),
    ("LLM_UNLINK_FAILED", BASE + 10),
    ("LLM_NOTIFY_PROMPT_UNLINK_FAILED", BASE + 11),
    ("LLM_CLUSTER_NUM_EXCEED_LIMIT", BASE + 12),
    ("LLM_PROCESSING_LINK", BASE + 13),
    ("LLM_DEVICE_OUT_OF_MEMORY", BASE + 14),
    ("LLM_PREFIX_ALREADY_EXIST", BASE + 15),
    ("LLM_PREFIX_NOT_EXIST", BASE + 16),
    ("LLM_SEQ_LENOVERLIMIT", BASE + 17),
    ("LLM_NO_FREE_BLOCK", BASE + 18),
    ("LLM_BLOCKS_OUT_OF_MEMORY", BASE + 19),
    ("LLM_EXIST_LINK", BASE + 24),
    ("LLM_FEATURE_NOT_ENABLED", BASE + 25),
    ("LLM_TIMEOUT", BASE + 26),
    ("LLM_LINK_BUSY", BASE + 27),
    ("LLM_OUT_OF_MEMORY", BASE + 28),
    ("LLM_DEVICE_MEM_ERROR", 507053),
    ("LLM_SUSPECT_REMOTE_ERROR", 507057),
    ("LLM_UNKNOWN_ERROR", -1),
]


def test_every_code_with_value_in_declaration_order():
    assert [(code.name, code.value) for code in LLMStatusCode] == EXPECTED_CODES


def test_codes_are_ints_and_compare_with_ints():
    assert isinstance(LLMStatusCode.LLM_TIMEOUT, int)
    assert LLMStatusCode.LLM_SUCCESS == 0
    assert int(LLMStatusCode.LLM_PARAM_INVALID) == 0x5010B005
    assert LLMStatusCode(0x5010B01A) is LLMStatusCode.LLM_TIMEOUT


@pytest.mark.parametrize("code", list(LLMStatusCode))
def test_str_and_format_give_qualified_name(code):
    assert str(code) == f"LLMStatusCode.{code.name}"
    assert f"{code}" == f"LLMStatusCode.{code.name}"
    assert "{}".format(code) == f"LLMStatusCode.{code.name}"  # noqa: UP032 - str.format path


def test_exception_defaults_and_properties():
    exc = LLMException("boom")
    assert isinstance(exc, RuntimeError)
    assert exc.status_code is LLMStatusCode.LLM_SUCCESS
    assert str(exc) == "boom"
    exc = LLMException("a", "b", status_code=LLMStatusCode.LLM_TIMEOUT)
    assert exc.args == ("a", "b")
    assert exc.status_code is LLMStatusCode.LLM_TIMEOUT
    assert exc.code is LLMStatusCode.LLM_TIMEOUT


def test_exception_status_code_is_keyword_only():
    exc = LLMException("msg", LLMStatusCode.LLM_FAILED)
    assert exc.args == ("msg", LLMStatusCode.LLM_FAILED)
    assert exc.status_code is LLMStatusCode.LLM_SUCCESS


def test_exception_pickles_with_its_status_code():
    exc = pickle.loads(pickle.dumps(LLMException("x", status_code=LLMStatusCode.LLM_LINK_BUSY)))
    assert isinstance(exc, LLMException)
    assert exc.args == ("x",)
    assert exc.status_code is LLMStatusCode.LLM_LINK_BUSY


def test_status():
    assert Status(LLMStatusCode.LLM_SUCCESS).is_ok()
    status = Status(LLMStatusCode.LLM_TIMEOUT)
    assert not status.is_ok()
    assert status.status_code is LLMStatusCode.LLM_TIMEOUT


@pytest.mark.parametrize("code", [c for c in LLMStatusCode if c is not LLMStatusCode.LLM_UNKNOWN_ERROR])
def test_code_from_int_maps_every_core_code(code):
    assert code_from_int(int(code)) is code
    assert code_2_status(int(code)) is code


@pytest.mark.parametrize(
    "raw", [BASE + 20, BASE + 21, BASE + 22, BASE + 23, 1, 12345, BASE + 99, -1, 0xFFFFFFFF]
)
def test_code_from_int_unknown_and_unmapped_core_codes_give_failed(raw):
    assert code_from_int(raw) is LLMStatusCode.LLM_FAILED


@given(st.integers(min_value=-(2**31), max_value=2**32 - 1))
def test_code_from_int_is_total(raw):
    code = code_from_int(raw)
    assert isinstance(code, LLMStatusCode)
    assert code is not LLMStatusCode.LLM_UNKNOWN_ERROR


@pytest.mark.parametrize("func", ["link", "[link]"])
def test_raise_status_message(func):
    with pytest.raises(LLMException) as info:
        raise_status(func, LLMStatusCode.LLM_NOT_YET_LINK, "comm_id = 1")
    assert str(info.value) == "[link] failed, error code is LLMStatusCode.LLM_NOT_YET_LINK, comm_id = 1."
    assert info.value.status_code is LLMStatusCode.LLM_NOT_YET_LINK


def test_handle_llm_status():
    handle_llm_status(0, "[x]", "info")
    with pytest.raises(LLMException) as info:
        handle_llm_status(BASE + 2, "[pull_cache]", "key = k")
    assert info.value.status_code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
    assert (
        str(info.value) == "[pull_cache] failed, error code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, key = k."
    )
    with pytest.raises(LLMException) as info:
        handle_llm_status(BASE + 21, "[allocate_cache]", "d")
    assert info.value.status_code is LLMStatusCode.LLM_FAILED


def test_raise_if_helpers_format_and_default_code():
    raise_if_false(True, "never")
    raise_if_true(False, "never")
    with pytest.raises(LLMException, match=r"^value 3 is bad$") as info:
        raise_if_false(False, "value {0} is {bad}", 3, bad="bad")
    assert info.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
    with pytest.raises(LLMException, match=r"^braces {} kept$") as info:
        raise_if_true(1, "braces {} kept", status_code=LLMStatusCode.LLM_FAILED)
    assert info.value.status_code is LLMStatusCode.LLM_FAILED
