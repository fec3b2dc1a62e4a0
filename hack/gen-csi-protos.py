#!/usr/bin/env python3
"""Generate the CSI and kubelet plugin-registration gRPC modules of the agent, or check them (--check).

The ``.proto`` sources are committed in ``agent/cachelink_agent/csi/_proto/`` beside what this script makes
from them (``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``): the package then installs and runs without
grpcio-tools, and a test re-runs this script with ``--check`` so a changed source or generator is caught.
``--fetch`` refreshes the sources from their Go modules (``go mod download``, the pinned versions below).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ROOT = ROOT / "agent"
PROTO_DIR = PACKAGE_ROOT / "cachelink_agent" / "csi" / "_proto"
#: committed name -> (Go module@version, path of the file inside that module)
SOURCES = {
    "csi.proto": ("github.com/container-storage-interface/spec@v1.12.0", "csi.proto"),
    "registration.proto": ("k8s.io/kubelet@v0.34.1", "pkg/apis/pluginregistration/v1/api.proto"),
}
OUTPUTS = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def fetch() -> None:
    """Copy each source from its Go module (the Go toolchain's module cache)."""
    for name, (module, inner) in SOURCES.items():
        done = subprocess.run(
            ["go", "mod", "download", "-json", module], capture_output=True, text=True, check=True
        )
        source = Path(json.loads(done.stdout)["Dir"]) / inner
        (PROTO_DIR / name).write_bytes(source.read_bytes())
        print(f"{name} <- {module} {inner}")


def generate(out: Path) -> list[Path]:
    """Run protoc (grpcio-tools) on every source into ``out`` (laid out like ``agent/``)."""
    from grpc_tools import protoc  # noqa: PLC0415 - a development dependency only

    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    made = []
    for name in SOURCES:
        rel = (PROTO_DIR / name).relative_to(PACKAGE_ROOT)
        argv = [
            "protoc",
            f"-I{PACKAGE_ROOT}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(rel),
        ]
        if protoc.main(argv) != 0:
            raise SystemExit(f"protoc failed on {name}")
        made += [out / rel.parent / (rel.stem + suffix) for suffix in OUTPUTS]
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed modules")
    parser.add_argument("--fetch", action="store_true", help="refresh the .proto sources first (needs Go)")
    args = parser.parse_args()
    if args.fetch:
        fetch()
    with tempfile.TemporaryDirectory() as tmp:
        stale = []
        for made in generate(Path(tmp)):
            committed = PACKAGE_ROOT / made.relative_to(tmp)
            if args.check:
                if not committed.exists() or not filecmp.cmp(made, committed, shallow=False):
                    stale.append(str(committed.relative_to(ROOT)))
            else:
                shutil.copyfile(made, committed)
        if stale:
            print("out of date (run hack/gen-csi-protos.py): " + ", ".join(stale), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
