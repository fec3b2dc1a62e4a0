"""Refresh the CRD copies in ``cachelink/localstack/data`` from a checkout's ``crds/``.

    python -m cachelink.localstack.sync

``cachelink demo --kubeconfig`` applies missing CRDs from these copies when it runs from a wheel;
``tests/unit/test_demo_args.py`` fails when they differ from ``crds/``.
"""

from __future__ import annotations

import shutil
import sys

from cachelink.localstack.resources import CRD_FILES, DATA_DIR, checkout_root


def main() -> int:
    """Copy the CRDs into the package's data folder."""
    root = checkout_root()
    if root is None:
        print("not a checkout: crds/ is not next to the cachelink package", file=sys.stderr)
        return 1
    for name in CRD_FILES:
        shutil.copyfile(root / "crds" / name, DATA_DIR / "crds" / name)
    print(f"refreshed {DATA_DIR / 'crds'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
