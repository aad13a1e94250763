"""A plain TCP proxy process: ``python tcp_proxy.py LISTEN_PORT TARGET_HOST:PORT [--delay S]``.

Put in front of a real server, it is a backend that can be SIGKILLed mid-stream without restarting
the (slow-to-start) vLLM engine behind it: to the router the connection dies exactly as if the server
had. ``--delay`` pauses after each chunk sent back to the client, so a test can reliably kill it while
a generation is still flowing.
"""

from __future__ import annotations

import argparse
import asyncio


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
            if delay:
                await asyncio.sleep(delay)
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(port: int, target: str, delay: float) -> None:
    host, _, target_port = target.partition(":")

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(target_port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, server_writer, 0), pipe(server_reader, client_writer, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("target")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.target, args.delay))
