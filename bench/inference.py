"""Inference benchmark: TTFT and inter-token latency, disaggregated (router -> prefill -> CacheLink pull ->
decode) vs one process, for several prompt lengths; KV bytes moved, the pull's share of TTFT and the pull's
GB/s next to bench/transfer.py's figure for the same block size (64 tokens x 256 floats = 64 KiB per tensor).

    .venv/bin/python bench/inference.py                    # writes bench/results/inference.json
    .venv/bin/python bench/inference.py --lengths 16 256 --tokens 8 --out /tmp/quick.json

Needs the inference extra (./dev setup). Every process uses one BLAS thread. Not run in CI.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any

from benchlib import results

ROOT = results.ROOT
BLOCK_SIZE = 64  # tokens; x 256 floats x 4 B = 64 KiB per tensor block
THREADS = {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")}
# -P: the working directory (the repository's root) off sys.path, so that the installed package (with its
# compiled core) is imported, not the source tree's llm_datadist, which has none
CLI = [sys.executable, "-P", "-m", "cachelink_inference"]


def start(args: list[str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **THREADS},
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 180)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"{args[0]} did not start")
    return proc, json.loads(line)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def prompt_ids(length: int) -> list[int]:
    """``length`` token ids: BOS then a fixed text's tokens, repeated."""
    from cachelink_inference import weights
    from cachelink_inference.tokenizer import Tokenizer

    tok = Tokenizer(weights.load().metadata)
    text = json.loads((ROOT / "tests/inference/data/llamacpp_reference.json").read_text())["text"]
    body = tok.encode(text, add_bos=False)
    ids = [tok.bos_id]
    while len(ids) < length:
        ids += body
    return ids[:length]


def streamed(url: str, ids: list[int], tokens: int) -> dict[str, Any]:
    body = json.dumps({"prompt": ids, "max_tokens": tokens, "stream": True}).encode()
    req = urllib.request.Request(
        f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    stamps: list[float] = []
    info: dict[str, Any] = {}
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"])
            stamps.append(time.perf_counter() - started)
            info = info or event.get("cachelink", {})
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {"ttft_s": stamps[0], "itl_s": statistics.median(gaps) if gaps else None, **info}


def single_child(lengths: list[int], tokens: int, repeats: int) -> None:
    """Run in a child process: the reference engine, timed."""
    from cachelink_inference import runtime

    runtime.reproducible()
    from cachelink_inference.reference import Reference

    ref = Reference(block_size=BLOCK_SIZE, num_blocks=64)
    ref.generate(prompt_ids(16), 2)  # warm the page cache of the weights
    out = {}
    for length in lengths:
        ids = prompt_ids(length)
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            stamps = []
            for _tok in ref.engine.generate(ids, tokens):
                stamps.append(time.perf_counter() - started)
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            runs.append({"ttft_s": stamps[0], "itl_s": statistics.median(gaps)})
        out[str(length)] = runs
    print(json.dumps(out))


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def transfer_figure(path: str) -> float | None:
    try:
        data = json.loads(results.result_path("transfer").read_text())
    except OSError:
        return None
    for point in data["points"]:
        if point["block_bytes"] == 64 << 10 and point["data_path"] == path:
            return float(point["pull"]["gbps"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", nargs="+", default=["shm", "tcp"])
    parser.add_argument("--out", default=str(results.result_path("inference")), help="JSON file")
    parser.add_argument("--single-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    if args.single_child:
        single_child(args.lengths, args.tokens, args.repeats)
        return
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--single-child",
            "--lengths",
            *map(str, args.lengths),
            "--tokens",
            str(args.tokens),
            "--repeats",
            str(args.repeats),
        ],
        env={**os.environ, **THREADS},
        capture_output=True,
        text=True,
        check=True,
    )
    single = json.loads(child.stdout)
    points = []
    num_blocks = max(64, 2 * ((max(args.lengths) + args.tokens) // BLOCK_SIZE + 2))
    for path in args.paths:
        opts = ["--block-size", str(BLOCK_SIZE), "--num-blocks", str(num_blocks)]
        opts += ["--force-tcp"] if path == "tcp" else []
        procs = []
        try:
            prefill, p_info = start(["prefill", "--cluster-id", "1", *opts])
            procs.append(prefill)
            decode, d_info = start(["decode", "--cluster-id", "2", *opts])
            procs.append(decode)
            p_url, d_url = f"http://127.0.0.1:{p_info['port']}", f"http://127.0.0.1:{d_info['port']}"
            router, r_info = start(["router", "--prefill", p_url, "--decode", d_url])
            procs.append(router)
            url = f"http://127.0.0.1:{r_info['port']}"
            streamed(url, prompt_ids(16), 2)  # link and warm up
            for length in args.lengths:
                ids = prompt_ids(length)
                runs = [streamed(url, ids, args.tokens) for _ in range(args.repeats)]
                ttft = median_of(runs, "ttft_s")
                pull = median_of(runs, "pull_s")
                kv_bytes = runs[0]["kv_bytes"]
                points.append(
                    {
                        "data_path": path,
                        "prompt_tokens": length,
                        "generated_tokens": args.tokens,
                        "disaggregated": {"ttft_s": ttft, "itl_s": median_of(runs, "itl_s"), "runs": runs},
                        "single_process": {
                            "ttft_s": median_of(single[str(length)], "ttft_s"),
                            "itl_s": median_of(single[str(length)], "itl_s"),
                            "runs": single[str(length)],
                        },
                        "kv_bytes": kv_bytes,
                        "pull_s": pull,
                        "pull_share_of_ttft": pull / ttft,
                        "pull_gbps": kv_bytes / pull / 1e9,
                        "transfer_bench_pull_gbps_64KiB": transfer_figure(path),
                        "data_path_reported": runs[0]["data_path"],
                    }
                )
                print(
                    json.dumps(
                        {k: v for k, v in points[-1].items() if k not in ("disaggregated", "single_process")}
                    ),
                    flush=True,
                )
        finally:
            for proc in reversed(procs):
                stop(proc)
    result = {
        "machine": {
            **results.machine(),
            "loadavg_1_5_15_before": load_before,
            "loadavg_1_5_15_after": os.getloadavg(),
            "note": "a 2-core machine shared with other sessions' builds and tests: latencies vary by tens of %",
        },
        "method": (
            f"Gemma 3 270M Q4_K_M (float32 weights and KV), block size {BLOCK_SIZE} tokens (64 KiB per "
            f"tensor block, 36 tensors), greedy, {args.tokens} tokens, median of {args.repeats} runs, one "
            "BLAS thread per process; disaggregated = streamed through the router (TTFT = first SSE chunk "
            "at the client: prefill + link-less pull + finished + first chunk), single process = the "
            "reference engine in one process (TTFT = prefill); pull_s measured around pull_blocks on the "
            "decode server; kv_bytes = pulled blocks x 64 KiB x 36."
        ),
        "points": points,
    }
    results.write(args.out, result, indent=1)


if __name__ == "__main__":
    main()
