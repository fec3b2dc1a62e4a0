"""The API server's bridge to the real nodes' network, both ways, as one process.

The API server listens on the host's loopback; nodes and pods live in network namespaces of their own.

- **In:** a listener at ``HUB:PORT`` inside the hub namespace forwards every connection to the API
  server's loopback port: kubelets, kube-proxy and pods (through the ``kubernetes`` Service) reach it.
- **Out:** an HTTP CONNECT proxy on a Unix socket, named in the API server's egress selector for the
  ``cluster`` network: the API server reaches kubelets (logs, exec, port-forward) and pods through it,
  and every such connection is opened from inside the hub namespace.

Sockets are made by a thread that entered the hub namespace (``setns`` is per thread); a socket keeps
the namespace it was made in. Bytes are copied both ways until either side closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cachelink_dev.realnodes.netns import enter_netns

#: longest CONNECT request head accepted (bytes) and how long a client may take to send it (seconds)
MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
COPY_CHUNK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(COPY_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    try:
        await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))
    finally:
        for writer in (a[1], b[1]):
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()


class ApiProxy:
    """The two directions, sharing one thread parked in the hub namespace."""

    def __init__(self, netns_path: str, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._in_hub = ThreadPoolExecutor(1, "hub-netns", initializer=enter_netns, initargs=(netns_path,))

    async def _hub_socket(self) -> socket.socket:
        sock = await asyncio.get_running_loop().run_in_executor(
            self._in_hub, socket.socket, socket.AF_INET, socket.SOCK_STREAM
        )
        sock.setblocking(False)
        return sock

    async def forward_in(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection from the hub: copy it to the API server's loopback port."""
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(*self.upstream), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            writer.close()
            return
        await _splice((reader, writer), upstream)

    async def connect_out(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """An egress request of the API server: ``CONNECT host:port``, opened from the hub namespace."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method != "CONNECT":
                raise ValueError(f"method {method} is not CONNECT")
            host, port = target.rsplit(":", 1)
            sock = await self._hub_socket()
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, (host.strip("[]"), int(port))),
                    CONNECT_TIMEOUT_S,
                )
            except BaseException:
                sock.close()
                raise
        except (
            OSError,
            TimeoutError,
            ValueError,
            asyncio.LimitOverrunError,
            asyncio.IncompleteReadError,
        ) as exc:
            with contextlib.suppress(OSError, ConnectionError):
                writer.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{exc}\n".encode())
                await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        target_streams = await asyncio.open_connection(sock=sock)
        await _splice((reader, writer), target_streams)

    async def serve(self, listen: tuple[str, int], egress_socket: Path) -> None:
        """Serve both directions until cancelled."""
        listener = await self._hub_socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(listen)
        listener.listen(512)
        egress_socket.unlink(missing_ok=True)
        inbound = await asyncio.start_server(self.forward_in, sock=listener)
        outbound = await asyncio.start_unix_server(
            self.connect_out, path=str(egress_socket), limit=MAX_REQUEST_HEAD
        )
        egress_socket.chmod(0o600)
        print(
            f"apiproxy: {listen[0]}:{listen[1]} -> {self.upstream[0]}:{self.upstream[1]}; "
            f"egress {egress_socket}",
            flush=True,
        )
        async with inbound, outbound:
            await asyncio.gather(inbound.serve_forever(), outbound.serve_forever())


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    """``python -m cachelink_dev.realnodes.apiproxy --netns PATH --listen H:P --upstream H:P --egress S``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netns", required=True, help="the hub namespace (a /run/netns path)")
    parser.add_argument("--listen", required=True, type=_address, help="address in the hub namespace")
    parser.add_argument("--upstream", required=True, type=_address, help="the API server's loopback address")
    parser.add_argument("--egress", required=True, type=Path, help="Unix socket of the CONNECT proxy")
    args = parser.parse_args(argv)
    proxy = ApiProxy(args.netns, args.upstream)
    try:
        asyncio.run(proxy.serve(args.listen, args.egress))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"apiproxy: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
