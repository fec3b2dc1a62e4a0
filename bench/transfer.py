"""Transfer benchmark: pull_blocks / push_blocks between two processes, shuffled blocks, bytes verified.

For each data path (same-host shared memory, TCP forced) and block size (4 KiB, 64 KiB, 2 MiB) it moves
``--gib`` GiB per run (source block i -> destination block perm[i], a fixed random permutation, so no
neighbours merge), takes the median of ``--runs`` runs, and reports GB/s, CPU seconds of both processes
per GB moved, and the ratios to this machine's single-thread memcpy (256 MiB buffers) and one-stream
loopback TCP (1 MiB writes), measured in the same run. It also measures the CPU an idle linked pair uses.

    python bench/transfer.py --out bench/results/transfer.json            # full run (~10 minutes)
    python bench/transfer.py --runs 3 --gib 0.25 --out /tmp/quick.json    # quick look
    python bench/transfer.py --security --gib 0.5 --runs 7 --out bench/results/transfer-security.json

``--security`` measures only the cost of link security: TCP pull and push GB/s at 2 MiB blocks for a plain
link (no secret), an authenticated one (per-frame GMAC) and an encrypted one (AES-256-GCM), in the same run,
as ratios to the plain link, beside the one-core ceiling of AES-256-GCM (``openssl speed -evp aes-256-gcm``)
measured in that run. On CPUs with VAES and VPCLMULQDQ the engine's own AES-GCM path (csrc/aes_ctr.cc,
csrc/ghash.cc) is faster than OpenSSL 3.0's, so the links can beat that ceiling; see docs/security.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

SIZES = {"4KiB": 4 << 10, "64KiB": 64 << 10, "2MiB": 2 << 20}
TENSORS = 2  # K and V
PROMPT, DECODE, MODEL = 1, 2, 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def block_words(block_bytes: int) -> int:
    return block_bytes // 4


def fill_pattern(view: np.ndarray, tensor: int) -> None:
    """Block b, word k holds a value computable from (tensor, b, k) alone."""
    blocks, words = view.shape
    for start in range(0, blocks, 4096):
        b = np.arange(start, min(blocks, start + 4096), dtype=np.uint32)[:, None]
        k = np.arange(words, dtype=np.uint32)[None, :]
        view[start : start + len(b)] = b * np.uint32(2654435761) + k + np.uint32(tensor * 97)


def verify(view: np.ndarray, tensor: int, source_of: np.ndarray) -> bool:
    """Destination block j must hold source block source_of[j]."""
    blocks, words = view.shape
    k = np.arange(words, dtype=np.uint32)[None, :]
    for start in range(0, blocks, 4096):
        src = source_of[start : start + 4096].astype(np.uint32)[:, None]
        expected = src * np.uint32(2654435761) + k + np.uint32(tensor * 97)
        if not np.array_equal(view[start : start + len(src)], expected):
            return False
    return True


EXTRA: dict[str, str] = {}


def options(
    listen: str | None, pool_bytes: int, tcp: bool, extra: dict[str, str] | None = None
) -> dict[str, str]:
    from llm_datadist import LLMConfig

    cfg = LLMConfig()
    cfg.device_id = 0
    cfg.enable_cache_manager = True
    cfg.enable_remote_cache_accessible = True
    cfg.mem_pool_cfg = json.dumps({"memory_size": pool_bytes, "page_shift": 21})
    cfg.sync_kv_timeout = 120000
    if listen:
        cfg.listen_ip_info = listen
    opts = cfg.generate_options()
    if tcp:
        opts["cachelink.force_tcp"] = "1"
    opts.update(extra if extra is not None else EXTRA)
    return opts


def prompt_main(conn: Connection, total: int, block: int, tcp: bool, extra: dict[str, str]) -> None:
    """The prompt process: owns the source (pull) / destination (push) blocks cache."""
    from llm_datadist import BlocksCacheKey, CacheDesc, DataType, LLMDataDist, LLMRole
    from llm_datadist.ext import hosting as ext

    blocks = total // TENSORS // block
    dd = LLMDataDist(LLMRole.PROMPT, PROMPT)
    dd.init(options("127.0.0.1:0", total + (64 << 20), tcp, extra))
    desc = CacheDesc(TENSORS, [blocks, block_words(block)], DataType.DT_UINT32)
    cache = dd.cache_manager.allocate_blocks_cache(desc, BlocksCacheKey(PROMPT, MODEL))
    for t in range(TENSORS):
        fill_pattern(cache.numpy(t), t)
    conn.send((ext.listen_address(dd), os.getpid()))
    while True:
        command = conn.recv()
        if command[0] == "verify":  # after a push: dst block perm[i] holds decode block i
            source_of = np.empty(blocks, dtype=np.int64)
            source_of[command[1]] = np.arange(blocks)
            conn.send(all(verify(cache.numpy(t), t + 10, source_of) for t in range(TENSORS)))
        elif command[0] == "refill":
            for t in range(TENSORS):
                fill_pattern(cache.numpy(t), t)
            conn.send(True)
        else:
            break
    dd.finalize()


def median_gbps(seconds: list[float], total: int) -> float:
    return total / statistics.median(seconds) / 1e9


def run_point(
    total: int, block: int, tcp: bool, runs: int, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    from llm_datadist import BlocksCacheKey, CacheDesc, DataType, LLMClusterInfo, LLMDataDist, LLMRole
    from llm_datadist.ext import hosting as ext

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    extra = EXTRA if extra is None else extra
    peer = ctx.Process(target=prompt_main, args=(child, total, block, tcp, extra))
    peer.start()
    address, peer_pid = parent.recv()
    blocks = total // TENSORS // block
    dd = LLMDataDist(LLMRole.DECODER, DECODE)
    dd.init(options(None, total + (64 << 20), tcp, extra))
    try:
        info = LLMClusterInfo()
        info.remote_cluster_id = PROMPT
        info.append_local_ip_info("127.0.0.1", 0)
        ip, port = address.split(":")
        info.append_remote_ip_info(ip, int(port))
        assert dd.link_clusters([info], timeout=5000)[0] == 0
        cm = dd.cache_manager
        desc = CacheDesc(TENSORS, [blocks, block_words(block)], DataType.DT_UINT32)
        local = cm.allocate_blocks_cache(desc)
        perm = np.random.default_rng(1234).permutation(blocks)
        perm_list, identity = perm.tolist(), list(range(blocks))
        key = BlocksCacheKey(PROMPT, MODEL)
        result: dict[str, Any] = {
            "block_bytes": block,
            "bytes_per_run": blocks * block * TENSORS,
            "data_path": ext.links(dd)[0].data_path,
        }
        for op in ("pull", "push"):
            if op == "push":
                for t in range(TENSORS):
                    fill_pattern(local.numpy(t), t + 10)
            times, cpu = [], []
            for _ in range(runs):
                before = cpu_seconds(os.getpid()) + cpu_seconds(peer_pid)
                start = time.perf_counter()
                if op == "pull":  # local block i <- remote block perm[i]
                    cm.pull_blocks(key, local, perm_list, identity)
                else:  # remote block perm[i] <- local block i
                    cm.push_blocks(key, local, identity, perm_list)
                times.append(time.perf_counter() - start)
                cpu.append(cpu_seconds(os.getpid()) + cpu_seconds(peer_pid) - before)
            if op == "pull":
                ok = all(verify(local.numpy(t), t, perm) for t in range(TENSORS))
            else:
                parent.send(("verify", perm))
                ok = parent.recv()
            moved = blocks * block * TENSORS
            result[op] = {
                "gbps": median_gbps(times, moved),
                "seconds": times,
                "cpu_s_per_gb": statistics.median(cpu) / (moved / 1e9),
                "verified": bool(ok),
            }
            if not ok:
                raise SystemExit(f"bytes differ after {op} ({block} B blocks, tcp={tcp})")
        dd.unlink_clusters([info])
    finally:
        dd.finalize()
        parent.send(("exit",))
        peer.join(60)
    return result


def memcpy_gbps(runs: int) -> float:
    src = np.random.default_rng(0).integers(0, 255, 256 << 20, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return median_gbps(times, src.nbytes)


def _tcp_sender(port: int, total: int) -> None:
    chunk = bytes(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(total // len(chunk)):
            s.sendall(chunk)


def tcp_stream_gbps(total: int, runs: int) -> float:
    ctx = mp.get_context("spawn")
    times = []
    buf = bytearray(1 << 20)
    for _ in range(runs):
        with socket.create_server(("127.0.0.1", 0)) as server:
            sender = ctx.Process(target=_tcp_sender, args=(server.getsockname()[1], total))
            sender.start()
            conn, _ = server.accept()
            with conn:
                received = 0
                start = time.perf_counter()
                view = memoryview(buf)
                while received < total:
                    n = conn.recv_into(view)
                    if n == 0:
                        break
                    received += n
                times.append(time.perf_counter() - start)
            sender.join()
    return median_gbps(times, total)


def idle_cpu_percent(seconds: float) -> float:
    """CPU (percent of one core) an idle linked prompt+decode pair uses."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    peer = ctx.Process(target=prompt_main, args=(child, 8 << 20, 64 << 10, True, EXTRA))
    peer.start()
    address, peer_pid = parent.recv()
    from llm_datadist import LLMClusterInfo, LLMDataDist, LLMRole

    dd = LLMDataDist(LLMRole.DECODER, DECODE)
    dd.init(options(None, 64 << 20, True))
    info = LLMClusterInfo()
    info.remote_cluster_id = PROMPT
    info.append_local_ip_info("127.0.0.1", 0)
    ip, port = address.split(":")
    info.append_remote_ip_info(ip, int(port))
    dd.link_clusters([info], timeout=5000)
    time.sleep(0.5)
    before = cpu_seconds(os.getpid()) + cpu_seconds(peer_pid)
    time.sleep(seconds)
    used = cpu_seconds(os.getpid()) + cpu_seconds(peer_pid) - before
    dd.finalize()
    parent.send(("exit",))
    peer.join(30)
    return 100 * used / seconds


SECURITY_MODES: dict[str, dict[str, str]] = {
    "plain": {},
    "authenticated": {"cachelink.link_secret": "bench-secret"},
    "encrypted": {"cachelink.link_secret": "bench-secret", "cachelink.link_encryption": "1"},
}


def openssl_gcm_gbps() -> float:
    """One core's AES-256-GCM encryption rate on 16 KiB buffers (``openssl speed``, machine-readable)."""
    out = subprocess.run(
        ["openssl", "speed", "-evp", "aes-256-gcm", "-seconds", "2", "-bytes", "16384", "-mr"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("+F:"):
            return float(line.rsplit(":", 1)[1]) / 1e9
    raise SystemExit("openssl speed printed no result")


def security_report(total: int, runs: int, rounds: int) -> dict[str, Any]:
    """TCP at 2 MiB blocks for each link mode, as ratios to the plain link, and the AES-GCM ceiling.

    The modes run interleaved, ``rounds`` times (plain, authenticated, encrypted, plain, ...), and each ratio
    is the median of the per-round ratios: a machine whose load drifts during the run skews them less.
    """
    gcm = openssl_gcm_gbps()
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "method": f"TCP (force_tcp), 2 MiB blocks, {total / (1 << 30):g} GiB per run, median of {runs} runs; "
        f"modes interleaved over {rounds} rounds, ratios are medians of per-round ratios; both processes on "
        "this machine's cores",
        "openssl_aes_256_gcm_one_core_gbps": gcm,
        "rounds": [],
        "summary": {},
    }
    for _ in range(rounds):
        points = {
            mode: run_point(total, SIZES["2MiB"], True, runs, {**EXTRA, **extra})
            for mode, extra in SECURITY_MODES.items()
        }
        report["rounds"].append(points)
    for mode in SECURITY_MODES:
        summary: dict[str, float] = {}
        for op in ("pull", "push"):
            summary[f"{op}_gbps"] = statistics.median(r[mode][op]["gbps"] for r in report["rounds"])
            summary[f"{op}_ratio_to_plain"] = statistics.median(
                r[mode][op]["gbps"] / r["plain"][op]["gbps"] for r in report["rounds"]
            )
            summary[f"{op}_cpu_s_per_gb"] = statistics.median(
                r[mode][op]["cpu_s_per_gb"] for r in report["rounds"]
            )
        report["summary"][mode] = summary
        print(
            f"{mode:13}: pull {summary['pull_gbps']:6.2f} GB/s ({summary['pull_ratio_to_plain']:.2f}x)"
            f"  push {summary['push_gbps']:6.2f} GB/s ({summary['push_ratio_to_plain']:.2f}x)"
            f"  cpu {summary['pull_cpu_s_per_gb']:.2f} s/GB",
            flush=True,
        )
    print(f"openssl aes-256-gcm, one core: {gcm:.2f} GB/s")
    report["options"] = EXTRA
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gib", type=float, default=1.0, help="GiB moved per run (default 1)")
    parser.add_argument("--runs", type=int, default=10, help="runs per point; the median is reported")
    parser.add_argument("--sizes", default=",".join(SIZES), help="block sizes, from " + ",".join(SIZES))
    parser.add_argument("--paths", default="shm,tcp", help="data paths: shm, tcp")
    parser.add_argument("--out", default="bench/results/transfer.json", help="JSON output file")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra engine option for both sides, e.g. cachelink.tcp_stripes=1 (repeatable)",
    )
    parser.add_argument("--skip-baselines", action="store_true", help="skip memcpy/TCP/idle measurements")
    parser.add_argument(
        "--security", action="store_true", help="only the cost of link authentication and encryption"
    )
    parser.add_argument("--rounds", type=int, default=3, help="--security: interleaved rounds of the modes")
    args = parser.parse_args()
    EXTRA.update(item.split("=", 1) for item in args.option)
    total = int(args.gib * (1 << 30))
    if args.security:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(security_report(total, args.runs, args.rounds), indent=2))
        return
    memcpy = 0.0 if args.skip_baselines else memcpy_gbps(args.runs)
    tcp = 0.0 if args.skip_baselines else tcp_stream_gbps(1 << 30, max(3, args.runs // 2))
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "method": f"{args.gib} GiB per run, median of {args.runs}, blocks shuffled by a fixed permutation",
        "memcpy_gbps": memcpy,
        "tcp_stream_gbps": tcp,
        "points": [],
    }
    for path in args.paths.split(","):
        for name in args.sizes.split(","):
            point = run_point(total, SIZES[name], path == "tcp", args.runs)
            point["path"] = path
            baseline = (memcpy if path == "shm" else tcp) or float("nan")
            for op in ("pull", "push"):
                point[op]["ratio_to_baseline"] = point[op]["gbps"] / baseline
            report["points"].append(point)
            print(
                f"{path:4} {name:>6}: pull {point['pull']['gbps']:6.2f} GB/s ({point['pull']['ratio_to_baseline']:.2f}x)"
                f"  push {point['push']['gbps']:6.2f} GB/s ({point['push']['ratio_to_baseline']:.2f}x)"
                f"  cpu {point['pull']['cpu_s_per_gb']:.2f} s/GB",
                flush=True,
            )
    report["options"] = EXTRA
    report["idle_linked_pair_cpu_percent"] = 0.0 if args.skip_baselines else idle_cpu_percent(5.0)
    print(
        f"memcpy {memcpy:.2f} GB/s, tcp stream {tcp:.2f} GB/s, idle pair {report['idle_linked_pair_cpu_percent']:.2f}% cpu"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
