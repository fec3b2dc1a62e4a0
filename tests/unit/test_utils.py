"""The shared argument checks: error types, status codes and exact messages."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_datadist.status import LLMException, LLMStatusCode
from llm_datadist.utils.utils import (
    check_dict,
    check_inner,
    check_int32,
    check_int64,
    check_int_list,
    check_isinstance,
    check_list_int32,
    check_list_int64,
    check_list_uint64,
    check_param,
    check_positive_or_set_default,
    check_range,
    check_uint8,
    check_uint16,
    check_uint32,
    check_uint64,
)

WIDTHS = [
    (check_uint8, "uint8", 0, 2**8 - 1),
    (check_uint16, "uint16", 0, 2**16 - 1),
    (check_uint32, "uint32", 0, 2**32 - 1),
    (check_uint64, "uint64", 0, 2**64 - 1),
    (check_int32, "int32", -(2**31), 2**31 - 1),
    (check_int64, "int64", -(2**63), 2**63 - 1),
]
WIDTH_IDS = [w[1] for w in WIDTHS]


# ---- check_isinstance ----------------------------------------------------------------------


def test_isinstance_returns_value_and_accepts_alternatives_and_subclasses():
    value = [1]
    assert check_isinstance("v", value, list) is value
    assert check_isinstance("v", (1,), [list, tuple]) == (1,)

    class Sub(list):
        pass

    sub = Sub()
    assert check_isinstance("v", sub, list) is sub


def test_isinstance_message_single_and_multiple():
    with pytest.raises(TypeError) as info:
        check_isinstance("cluster_id", "1", int)
    assert str(info.value) == "cluster_id only support ['int'], but got <class 'str'>."
    with pytest.raises(TypeError) as info:
        check_isinstance("device_id", 1.5, [list, tuple, int])
    assert str(info.value) == "device_id only support ['list', 'tuple', 'int'], but got <class 'float'>."


def test_isinstance_extra_fmt_prefix():
    with pytest.raises(TypeError) as info:
        check_isinstance("cluster_id", "x", int, extra_fmt="The first param ")
    assert str(info.value) == "The first param cluster_id only support ['int'], but got <class 'str'>."


def test_isinstance_none_only_when_allowed():
    assert check_isinstance("v", None, list, allow_none=True) is None
    with pytest.raises(TypeError, match=re.escape("v only support ['list'], but got <class 'NoneType'>.")):
        check_isinstance("v", None, list)


def test_isinstance_rejects_bool_for_int_but_not_for_bool():
    with pytest.raises(TypeError, match=re.escape("but got <class 'bool'>.")):
        check_isinstance("cluster", True, [int])
    assert check_isinstance("flag", True, [bool]) is True
    assert check_isinstance("flag", False, bool) is False


def test_isinstance_inner_elements():
    assert check_isinstance("ids", [0, 1], [list, tuple], inner=int) == [0, 1]
    with pytest.raises(TypeError) as info:
        check_isinstance("ids", [0, "1"], [list, tuple], inner=int)
    assert str(info.value) == "ids inner type only support [<class 'int'>], but got <class 'str'>."
    with pytest.raises(TypeError, match="inner type"):
        check_isinstance("ids", [0, True], [list, tuple], inner=int)
    # the outer type is checked before iterating
    with pytest.raises(TypeError, match=re.escape("ids only support ['list'], but got <class 'int'>.")):
        check_isinstance("ids", 1, list, inner=int)


def test_check_inner_direct():
    check_inner("v", (), int)
    with pytest.raises(TypeError, match="v inner type only support"):
        check_inner("v", [1, 2.0], int)


def test_check_dict_messages():
    check_dict("opts", {}, str, str)
    check_dict("opts", {"a": [1]}, str, list, int)
    with pytest.raises(TypeError) as info:
        check_dict("ge_options", {1: "a"}, str, str)
    assert str(info.value) == "ge_options dict key only support <class 'str'>, but got <class 'int'>."
    with pytest.raises(TypeError) as info:
        check_dict("ge_options", {"a": 1}, str, str)
    assert str(info.value) == "ge_options dict value only support <class 'str'>, but got <class 'int'>."
    with pytest.raises(TypeError, match="dict value inner type only support"):
        check_dict("opts", {"a": [1, "2"]}, str, list, int)
    with pytest.raises(TypeError):
        check_dict("rank", {0: True}, int, int)
    with pytest.raises(TypeError):
        check_dict("rank", {True: 0}, int, int)


# ---- integer widths ------------------------------------------------------------------------


@pytest.mark.parametrize(("checker", "width", "low", "high"), WIDTHS, ids=WIDTH_IDS)
def test_width_accepts_bounds(checker, width, low, high):
    for value in (low, high, 0, low + 1, high - 1):
        assert checker("value", value) is None


@pytest.mark.parametrize(("checker", "width", "low", "high"), WIDTHS, ids=WIDTH_IDS)
def test_width_rejects_just_outside_with_exact_message(checker, width, low, high):
    for value in (low - 1, high + 1, -(2**128), 2**128):
        message = f"cluster_id's value is out of range,{value} is not a {width} value."
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            checker("cluster_id", value)


@pytest.mark.parametrize(("checker", "width", "low", "high"), WIDTHS, ids=WIDTH_IDS)
@pytest.mark.parametrize("value", [None, "1", 1.0, [], True, False])
def test_width_rejects_non_int_with_type_error(checker, width, low, high, value):
    with pytest.raises(TypeError) as info:
        checker("device_id", value)
    assert str(info.value) == f"device_id only support ['int'], but got {type(value)}."


@pytest.mark.parametrize(("checker", "width", "low", "high"), WIDTHS, ids=WIDTH_IDS)
@given(value=st.integers(min_value=-(2**70), max_value=2**70))
def test_width_accepts_exactly_its_range(checker, width, low, high, value):
    if low <= value <= high:
        checker("v", value)
    else:
        with pytest.raises(ValueError, match="out of range"):
            checker("v", value)


def test_list_width_checks():
    check_list_int32("ids", [-(2**31), 0, 2**31 - 1])
    check_list_int64("ids", ())
    check_list_uint64("ids", (0, 2**64 - 1))
    with pytest.raises(ValueError, match=r"^ids's value is out of range,-1 is not a uint64 value\.$"):
        check_list_uint64("ids", [0, -1])
    with pytest.raises(TypeError, match="ids"):
        check_list_int64("ids", [0, "1"])


def test_check_int_list():
    check_int_list("dst_addrs", [1, 2], check_uint64)
    check_int_list("dst_addrs", (), check_uint64)
    check_int_list("dst_addrs", None, check_uint64, allow_none=True)
    with pytest.raises(
        TypeError, match=re.escape("dst_addrs only support ['list', 'tuple'], but got <class 'NoneType'>.")
    ):
        check_int_list("dst_addrs", None, check_uint64)
    with pytest.raises(TypeError, match="inner type"):
        check_int_list("dst_addrs", [1, 2.0], check_uint64)
    with pytest.raises(ValueError, match="not a uint64 value"):
        check_int_list("dst_addrs", [1, -2], check_uint64)


def test_check_positive_or_set_default():
    assert check_positive_or_set_default("size", None) == -1
    assert check_positive_or_set_default("size", None, default=128) == 128
    assert check_positive_or_set_default("size", 0, default=128) == 0
    with pytest.raises(ValueError, match=r"^size's value:-1 is invalid, should be >= 0$"):
        check_positive_or_set_default("size", -1)
    with pytest.raises(TypeError, match="size"):
        check_positive_or_set_default("size", 1.0)  # type: ignore[arg-type]


# ---- semantic checks -----------------------------------------------------------------------


def test_check_param():
    check_param(True, "unused")
    with pytest.raises(LLMException) as info:
        check_param(False, "timeout {0} bad", 0)
    assert str(info.value) == "timeout 0 bad"
    assert info.value.status_code is LLMStatusCode.LLM_PARAM_INVALID


def test_check_range_type_step_order():
    check_range("r", range(0, 3), require_increasing=True)
    check_range("r", range(3, 1), require_increasing=False)
    check_range("r", None, require_increasing=True, allow_none=True)
    with pytest.raises(TypeError) as te:
        check_range("src_layer_range", [0, 1], require_increasing=True)
    assert str(te.value) == "src_layer_range only support ['range'], but got <class 'list'>."
    with pytest.raises(TypeError):
        check_range("src_layer_range", None, require_increasing=True)
    with pytest.raises(LLMException) as le:
        check_range("src_layer_range", range(0, 4, 2), require_increasing=False)
    assert str(le.value) == "check src_layer_range.step == 1 failed"
    assert le.value.status_code is LLMStatusCode.LLM_PARAM_INVALID
    for bad in (range(2, 2), range(3, 1), range(-1, 2)):
        with pytest.raises(LLMException) as le:
            check_range("dst_layer_range", bad, require_increasing=True)
        assert str(le.value) == f"check 0 <= range.start < range.stop failed, dst_layer_range = {bad}"
