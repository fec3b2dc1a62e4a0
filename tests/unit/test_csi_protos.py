"""The committed CSI and plugin-registration modules are what hack/gen-csi-protos.py makes from the sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "agent" / "cachelink_agent" / "csi" / "_proto"


def _check() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen-csi-protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_generated_modules_match_their_sources():
    done = _check()
    assert done.returncode == 0, done.stderr


def test_a_changed_module_is_caught(tmp_path):
    module = PROTO_DIR / "registration_pb2.py"
    saved = module.read_bytes()
    try:
        module.write_bytes(saved + b"# edited by hand\n")
        done = _check()
    finally:
        module.write_bytes(saved)
    assert done.returncode == 1 and "registration_pb2.py" in done.stderr


@pytest.mark.parametrize("service", ["csi.v1.Identity", "csi.v1.Node", "pluginregistration.Registration"])
def test_the_services_have_the_names_the_kubelet_calls(service):
    from cachelink_agent.csi._proto import csi_pb2, registration_pb2

    pool = {**csi_pb2.DESCRIPTOR.services_by_name, **registration_pb2.DESCRIPTOR.services_by_name}
    assert service in {s.full_name for s in pool.values()}
