"""The core's status codes and pool kinds, exported by the binding, against their Python counterparts.

``llm_datadist/status.py`` keeps its own table (it is pure Python and loads without the native core);
these tests are what keeps that table and ``csrc/status.h`` in step.
"""

import subprocess
import sys

import pytest

from llm_datadist import _native
from llm_datadist.status import LLMStatusCode, code_from_int


def test_the_core_exports_its_codes():
    assert len(_native.Code) > 0
    assert _native.Code.SUCCESS == 0
    assert _native.Code.FAILED == 0xFFFFFFFF


@pytest.mark.parametrize("code", list(_native.Code), ids=lambda c: c.name)
def test_every_core_code_maps_to_the_llm_status_code_of_its_name(code):
    expected = LLMStatusCode[f"LLM_{code.name}"]
    assert int(code) == expected.value
    assert code_from_int(int(code)) is expected
    assert _native.status_of(int(code)) is expected


def test_core_error_codes_translate():
    error = _native.CoreError(int(_native.Code.NOT_YET_LINK), "cluster 7 is not linked")
    exc = _native.to_exception("pull_cache", error)
    assert exc.status_code is LLMStatusCode.LLM_NOT_YET_LINK


def test_pool_constants_are_the_core_pool_kinds():
    assert int(_native.PoolKind.DEVICE) == _native.POOL_DEVICE
    assert int(_native.PoolKind.HOST) == _native.POOL_HOST
    assert type(_native.POOL_DEVICE) is int
    assert type(_native.POOL_HOST) is int
    assert {kind.name for kind in _native.PoolKind} == {"REGISTERED", "DEVICE", "HOST"}


def test_status_module_loads_without_the_native_core():
    # The package's __init__ loads the core; the status module alone needs neither it nor the package.
    code = (
        "import importlib.util, sys\n"
        "folder = importlib.util.find_spec('llm_datadist').submodule_search_locations[0]\n"
        "sys.modules['llm_datadist'] = None\n"
        "sys.modules['llm_datadist._core'] = None\n"
        "spec = importlib.util.spec_from_file_location('status_alone', folder + '/status.py')\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert module.code_from_int(0x5010B007) is module.LLMStatusCode.LLM_NOT_YET_LINK\n"
        "assert 'llm_datadist._core' not in sys.modules or sys.modules['llm_datadist._core'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
