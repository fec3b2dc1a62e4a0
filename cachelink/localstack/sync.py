"""Refresh the copies in ``cachelink/localstack/data`` from a checkout.

    python -m cachelink.localstack.sync


The CRDs are copied from ``crds/``; the operator's RBAC is rendered from the chart with ``helm template``
(labels made independent of the chart's version). ``tests/unit/test_demo_args.py`` and
``tests/e2e/test_demo.py`` fail when the copies differ from their sources.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from cachelink.localstack.rbac import render_chart_rbac_text
from cachelink.localstack.resources import CRD_FILES, DATA_DIR, checkout_root

RBAC_HEADER = """\
# The operator's RBAC as the chart renders it for release "cachelink" in namespace cachelink-system
# (helm template ... --show-only templates/operator-rbac.yaml), shipped so that `cachelink demo` works
# from a wheel, without the chart. Regenerate with `python -m cachelink.localstack.sync`.
"""
_HELM_LABELS = re.compile(
    r'    app\.kubernetes\.io/version: "[^"]*"\n    app\.kubernetes\.io/managed-by: Helm\n'
    r"    helm\.sh/chart: [^\n]*\n"
)


def render_rbac_copy(helm: Path | str, chart: Path) -> str:
    """The shipped RBAC file's text: the chart's rendering, labels independent of the chart's version."""
    rendered = render_chart_rbac_text(helm, chart)
    lines = [line for line in rendered.splitlines(keepends=True) if not line.startswith("# Source:")]
    text = _HELM_LABELS.sub("    app.kubernetes.io/managed-by: cachelink-localstack\n", "".join(lines))
    text = re.sub(r"\n\s*\n+---", "\n---", text).lstrip("-\n")
    return RBAC_HEADER + text.rstrip() + "\n"


def main() -> int:
    """Copy the CRDs and render the RBAC into the package's data folder."""
    root = checkout_root()
    if root is None:
        print("not a checkout: crds/ and charts/ are not next to the cachelink package", file=sys.stderr)
        return 1
    for name in CRD_FILES:
        shutil.copyfile(root / "crds" / name, DATA_DIR / "crds" / name)
    from cachelink.devcluster import ensure_tools  # noqa: PLC0415

    helm = ensure_tools().helm
    (DATA_DIR / "operator-rbac.yaml").write_text(render_rbac_copy(helm, root / "charts" / "cachelink"))
    print(f"refreshed {DATA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
