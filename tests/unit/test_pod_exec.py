"""The local pod runner's container start: volumes bound as the kubelet would, from the host's view."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from cachelink.localstack.podspec import ContainerPlan, Mount

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="mount namespaces need root and unshare"
)


def test_a_volume_over_tmp_does_not_hide_a_later_volume_whose_source_is_under_it(tmp_path: Path) -> None:
    """The agent mounts an emptyDir at /tmp before its CSI folders; their host folders may live under /tmp."""
    source = tmp_path / "node" / "plugins"
    source.mkdir(parents=True)
    (source / "marker").write_text("node folder")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    target = tmp_path / "container" / "plugins"
    plan = ContainerPlan(
        argv=["cat", str(target / "marker")],
        env={"PATH": os.defpath},
        mounts=[Mount(str(scratch), str(tmp_path / "node")), Mount(str(source), str(target))],
    )
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(asdict(plan)))
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-P", "-m",
         "cachelink.localstack.pod_exec", str(plan_file)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout == "node folder"
