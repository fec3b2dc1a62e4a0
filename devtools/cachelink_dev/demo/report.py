"""The demo's summary: one row per link (nodes, state, data path, bytes, GB/s, verified)."""

from __future__ import annotations

from typing import Any

from cachelink_dev.demo.transfer import Transfer


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; numbers (headers starting with a space) right-aligned."""
    widths = [max(len(h.strip()), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if h.startswith(" ") else c.ljust(w)
            for c, w, h in zip(cells, widths, headers, strict=True)
        ).rstrip()

    out = [line([h.strip() for h in headers])]
    out.append("-" * len(out[0]))
    return "\n".join(out + [line(r) for r in rows])


def summary(obj: dict[str, Any], ready_s: float, moved: Transfer | None) -> str:
    """The table printed at the end: one row per link, then the CacheLink's totals."""
    status, meta = obj["status"], obj["metadata"]
    nodes = {i["name"]: i.get("node", "") for i in status.get("instances", [])}
    headers = ["link: prompt instance (node)", "decode instance (node)", "state", "data path"]
    headers += [" MiB", " seconds", " GB/s", "verified"]
    rows = []
    for link in status.get("links", []):
        cells = [f"{link[side]} ({nodes.get(link[side], '?')})" for side in ("prompt", "decode")]
        cells += [link["state"], link.get("dataPath") or "?"]
        if moved is None:
            cells += ["-", "-", "-", "-"]
        else:
            verified = f"every byte ({moved.tensors} tensors)" if moved.verified else "NO"
            cells += [f"{moved.bytes / 2**20:.0f}", f"{moved.seconds:.3f}", f"{moved.gbps:.2f}", verified]
        rows.append(cells)
    policies = ", ".join(status.get("policies", [])) or "none"
    return (
        f"CacheLink {meta['namespace']}/{meta['name']}: phase {status.get('phase')}, "
        f"{status.get('readyLinks')}/{status.get('desiredLinks')} links ready, Ready {ready_s:.1f}s after "
        f"apply; policies: {policies}\n" + table(headers, rows)
    )
