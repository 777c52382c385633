"""How fast can any server answer Generate through grpcio's asyncio API on this machine?

Runs the Generator service with handlers that do no work, one server at a time, and drives
each with gan-bench's client at the given concurrency (docs/benchmarks.md, "Where the time
goes"):

* ``direct``: the handler returns a fixed 1024-byte image at once (it never suspends);
* ``batched``: the handler queues a future and awaits it; a batching task takes whatever is
  queued, hands it to a worker thread (which does nothing) and resolves the futures, the shape
  of any dynamic batcher, with no model, metrics or validation;
* ``accepts``: ``batched`` with ganserve's 32 extra pending accepts per method
  (`ganserve.serve.accept`), so calls no longer wait for grpcio's one pending accept.

Example:

    .venv/bin/python docs/grpc_ceiling.py --concurrency 64 --rounds 3
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import subprocess
import sys

import click
import grpc

IMAGE = bytes(1024)  # the bundled model's 32x32 grey reply
MODES = ("direct", "batched", "accepts")


def _servicer(mode: str):
    from ganserve.v1 import generator_pb2 as pb
    from ganserve.v1 import generator_pb2_grpc

    class Servicer(generator_pb2_grpc.GeneratorServicer):
        def __init__(self) -> None:
            self.queue: collections.deque[asyncio.Future[bytes]] = collections.deque()
            self.arrived = asyncio.Event()
            self.pool = concurrent.futures.ThreadPoolExecutor(2)
            self.free = asyncio.Semaphore(2)
            self.running: set[asyncio.Task[None]] = set()

        async def batches(self) -> None:
            loop = asyncio.get_running_loop()
            while True:
                await self.free.acquire()
                while not self.queue:
                    self.arrived.clear()
                    await self.arrived.wait()
                batch = list(self.queue)
                self.queue.clear()
                task = loop.create_task(self.run(batch))
                self.running.add(task)
                task.add_done_callback(self.running.discard)

        async def run(self, batch: list[asyncio.Future[bytes]]) -> None:
            try:
                await asyncio.get_running_loop().run_in_executor(self.pool, len, batch)
                for future in batch:
                    if not future.done():
                        future.set_result(IMAGE)
            finally:
                self.free.release()

        async def GetModelInfo(self, request, context):
            return pb.ModelInfo(num_classes=10)

        async def Generate(self, request, context):
            if mode == "direct":
                return pb.GenerateResponse(image=IMAGE)
            future = asyncio.get_running_loop().create_future()
            self.queue.append(future)
            self.arrived.set()
            return pb.GenerateResponse(image=await future)

    return Servicer()


async def _serve(mode: str, port: int) -> None:
    from ganserve.serve.accept import ConcurrentAccepts
    from ganserve.serve.wire import GuardedRegistrar
    from ganserve.v1 import generator_pb2_grpc

    server = grpc.aio.server()
    servicer = _servicer(mode)
    registrar = GuardedRegistrar(server)
    generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, registrar)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if mode == "accepts":
        ConcurrentAccepts(server, registrar.registered, (), depth=32).start()
    batches = asyncio.get_running_loop().create_task(servicer.batches())
    await server.wait_for_termination()
    batches.cancel()


async def _measure(target: str, concurrency: int):
    from ganserve.bench import targets
    from ganserve.bench.load import Windows, measure

    channel = targets.channel(target)
    try:
        call = targets.ganserve_generate(channel, encoding="raw", num_classes=10)
        return await measure(
            call,
            label="",
            concurrency=concurrency,
            windows=Windows(warmup_s=1.0, window_s=1.5, max_windows=4),
        )
    finally:
        await channel.close()


@click.command(help=__doc__)
@click.option("--concurrency", type=click.IntRange(1), default=64)
@click.option("--rounds", type=click.IntRange(1), default=3)
@click.option("--serve", type=click.Choice(MODES), hidden=True)
@click.option("--port", type=int, default=0, hidden=True)
def main(concurrency: int, rounds: int, serve: str | None, port: int) -> None:
    if serve is not None:
        asyncio.run(_serve(serve, port))
        return
    from ganserve.bench.compare import free_port

    click.echo(f"mode     round  req/s   p50 ms  p99 ms  client CPU (c={concurrency})")
    for round_ in range(1, rounds + 1):
        for mode in MODES:
            port = free_port()
            argv = [sys.executable, __file__, "--serve", mode, "--port", str(port)]
            server = subprocess.Popen(argv)
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    grpc.channel_ready_future(channel).result(timeout=60)
                point = asyncio.run(_measure(f"127.0.0.1:{port}", concurrency))
            finally:
                server.terminate()
                server.wait(10)
            click.echo(
                f"{mode:8s} {round_:5d}  {point.requests_per_s:5.0f}  "
                f"{point.latency_ms['p50']:7.2f} {point.latency_ms['p99']:7.2f}  "
                f"{point.client_cpu:.2f}"
            )


if __name__ == "__main__":
    main()
