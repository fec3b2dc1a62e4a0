"""``cachelink-inference``: prepare the weights, run a prefill/decode server or the router, or generate."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _ready(payload: dict[str, Any]) -> None:
    print(json.dumps(payload), flush=True)


def _server_args(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--cluster-id", type=int, default=None, help="required unless --attach-dir")
    sub.add_argument(
        "--attach-dir",
        default=None,
        help="attach to a node agent's instance through this socket folder (a pod's CacheLink CSI volume); "
        "the operator links, this server only pulls",
    )
    sub.add_argument("--instance", default=None, help="instance to attach to (default: the only one)")
    sub.add_argument("--attach-timeout", type=float, default=60.0, help="s to wait for the instance socket")
    sub.add_argument("--host", default="127.0.0.1")
    sub.add_argument("--port", type=int, default=0, help="HTTP port (0: a free one, printed when ready)")
    sub.add_argument("--kv-port", type=int, default=0, help="CacheLink listen / device port (0: a free one)")
    sub.add_argument("--num-blocks", type=int, default=256)
    sub.add_argument("--block-size", type=int, default=16)
    sub.add_argument(
        "--registered", action="store_true", help="register_blocks_cache on 2 MiB-aligned buffers"
    )
    sub.add_argument("--force-tcp", action="store_true")
    sub.add_argument("--link-mode", choices=["clusters", "rank_table"], default="clusters")
    sub.add_argument(
        "--hold-timeout", type=float, default=30.0, help="s a prompt keeps its blocks for decode"
    )
    sub.add_argument("--transfer-timeout-ms", type=int, default=10000)
    sub.add_argument("--link-timeout", type=float, default=10.0)
    sub.add_argument("--notify-timeout", type=float, default=5.0)
    sub.add_argument(
        "--cache-dir", default=None, help="dequantised weights (default ~/.cache/cachelink/inference)"
    )
    sub.add_argument("--debug", action="store_true", help="allow negative-control knobs (skip_pull)")


def main(argv: list[str] | None = None) -> int:
    from cachelink_inference import runtime  # noqa: PLC0415 (before numpy is imported)

    runtime.reproducible()
    parser = argparse.ArgumentParser(prog="cachelink-inference")
    subs = parser.add_subparsers(dest="cmd", required=True)
    prep = subs.add_parser("prepare", help="dequantise the model into the cache directory")
    prep.add_argument("--cache-dir", default=None)
    for role in ("prefill", "decode"):
        _server_args(subs.add_parser(role, help=f"run a {role} server"))
    router = subs.add_parser("router", help="run the router")
    router.add_argument("--prefill", required=True)
    router.add_argument("--decode", required=True, action="append")
    router.add_argument("--host", default="127.0.0.1")
    router.add_argument("--port", type=int, default=0)
    router.add_argument("--prefill-timeout", type=float, default=60.0)
    router.add_argument("--decode-timeout", type=float, default=300.0)
    gen = subs.add_parser("generate", help="single-process greedy generation (the reference)")
    gen.add_argument("--prompt", action="append", default=[], help="text (repeatable)")
    gen.add_argument("--ids-json", default=None, help="JSON list of token-id lists")
    gen.add_argument("--max-tokens", type=int, default=16)
    gen.add_argument("--block-size", type=int, default=16)
    gen.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    if args.cmd in ("prefill", "decode"):
        if (args.cluster_id is None) == (args.attach_dir is None):
            parser.error("pass exactly one of --cluster-id and --attach-dir")
        if args.attach_dir is not None and (args.registered or args.link_mode != "clusters"):
            parser.error("--attach-dir uses the agent's allocated caches and the operator's links")

    if args.cmd == "prepare":
        from cachelink_inference import weights  # noqa: PLC0415 (after runtime.reproducible())

        print(weights.prepare(args.cache_dir))
        return 0
    if args.cmd in ("prefill", "decode"):
        from cachelink_inference import server  # noqa: PLC0415 (after runtime.reproducible())

        cfg = server.ServerConfig(
            role=args.cmd,
            cluster_id=args.cluster_id or 0,
            host=args.host,
            port=args.port,
            kv_port=args.kv_port,
            num_blocks=args.num_blocks,
            block_size=args.block_size,
            registered=args.registered,
            force_tcp=args.force_tcp,
            link_mode=args.link_mode,
            hold_timeout_s=args.hold_timeout,
            transfer_timeout_ms=args.transfer_timeout_ms,
            link_timeout_s=args.link_timeout,
            notify_timeout_s=args.notify_timeout,
            cache_dir=args.cache_dir,
            debug=args.debug,
            attach_dir=args.attach_dir,
            instance=args.instance,
            attach_timeout_s=args.attach_timeout,
        )
        server.die_during_pull_hook()
        try:
            server.run_server(cfg, lambda port: _ready({"port": port, "kv_port": cfg.kv_port}))
        except server.AttachFailed as exc:
            print(f"cachelink-inference {args.cmd}: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.cmd == "router":
        from cachelink_inference import server  # noqa: PLC0415 (after runtime.reproducible())

        rcfg = server.RouterConfig(
            prefill_url=args.prefill,
            decode_urls=args.decode,
            host=args.host,
            port=args.port,
            prefill_timeout_s=args.prefill_timeout,
            decode_timeout_s=args.decode_timeout,
        )
        server.run_router(rcfg, lambda port: _ready({"port": port}))
        return 0
    from cachelink_inference import reference  # noqa: PLC0415 (after runtime.reproducible())

    prompts: list[list[int]] = json.loads(args.ids_json) if args.ids_json else []
    results = reference.generate_many(args.prompt, prompts, args.max_tokens, args.block_size, args.cache_dir)
    json.dump(results, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
