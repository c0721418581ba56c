"""The floor: the least work a grpc.aio ADS server can do to push one change to every stream.

A bare ``grpc.aio`` server with the same structure any Python xDS server needs
(a reader per stream, a writer woken on a push) and nothing else: no protocol
state, no per-stream decisions. A push serializes ONE response (the changed
resources, a new version and nonce) and writes those same bytes to every
connected stream; ACKs are counted by nonce. A new stream gets the full state
unless it resumes with the current version (SotW ``version_info``, delta
``initial_resource_versions``), as a content-versioned server would do.

Resources are Wasm filters shaped like the ones wasmxds serves (a local module
path, a JSON configuration carrying the benchmark's mark), so both servers
move about the same bytes.

Driven by :mod:`benchmarks.run` over stdin/stdout (one JSON object per line):
``{"op": "push", "mark": n}`` → ``{"at": wall_clock}``, ``{"op": "status"}``,
``{"op": "stop"}``. It prints ``{"port": p}`` first, once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as wasm_filter_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, wrappers_pb2

from benchmarks.loadgen import ECDS_TYPE, mark_text

__all__ = ["ADMISSION_OPTIONS", "SERVER_OPTIONS", "FloorServer", "wasm_config"]

# The same transport options as wasmxds (wasmxds.xds.server._SERVER_OPTIONS;
# tests/test_benchmarks_smoke.py keeps them equal), so project and floor differ
# only above gRPC.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 16 << 20),
]

# gRPC core queues new calls the application has not picked up yet and refuses
# them (RESOURCE_EXHAUSTED "Too many pending requests for this server") beyond
# a soft limit of 1000 (randomly) and a hard limit of 3000 (always). grpc.aio
# picks calls up one at a time on the event loop, so a burst of thousands of
# new streams while the loop is busy overflows it. Envoy would retry with
# backoff, but the queue is cheap (a call waiting for the application), so it is
# raised well beyond any burst the process can hold as streams.
ADMISSION_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 50_000),
]

_ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
_STRING_TYPE = "type.googleapis.com/google.protobuf.StringValue"


def wasm_config(name: str, configuration: str) -> bytes:
    """A TypedExtensionConfig holding a Wasm HTTP filter, serialized."""
    packed = any_pb2.Any(
        type_url=_STRING_TYPE,
        value=wrappers_pb2.StringValue(value=configuration).SerializeToString(),
    )
    filename = f"/var/cache/wasm/modules/sha256/{'0' * 64}.wasm"
    plugin = wasm_pb2.PluginConfig(
        name=name,
        root_id=name.rpartition(".")[2],
        vm_config=wasm_pb2.VmConfig(
            runtime="envoy.wasm.runtime.v8",
            code=base_pb2.AsyncDataSource(local=base_pb2.DataSource(filename=filename)),
        ),
        configuration=packed,
        failure_policy=wasm_pb2.FAIL_CLOSED,
    )
    wasm = wasm_filter_pb2.Wasm(config=plugin)
    config = extension_pb2.TypedExtensionConfig(
        name=name, typed_config=any_pb2.Any(type_url=_WASM_TYPE, value=wasm.SerializeToString())
    )
    data: bytes = config.SerializeToString()
    return data


def configuration(mark: int, pad: int) -> str:
    """The plugin configuration both servers carry: the mark, and padding to a realistic size."""
    return json.dumps({"bench_mark": mark_text(mark), "pad": "x" * pad}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class _Version:
    """Everything a push serializes, once, for every stream."""

    version: str
    nonce: str
    sotw_state: bytes
    sotw_push: bytes
    delta_state: bytes
    delta_push: bytes


def _build(number: int, mark: int, names: Sequence[str], push: Sequence[str], pad: int) -> _Version:
    version = f"v{number}"
    bodies = {name: wasm_config(name, configuration(mark, pad)) for name in names}

    def sotw(selected: Sequence[str], nonce: str) -> bytes:
        response = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=ECDS_TYPE, nonce=nonce
        )
        for name in selected:
            response.resources.add(type_url=ECDS_TYPE, value=bodies[name])
        data: bytes = response.SerializeToString()
        return data

    def delta(selected: Sequence[str], nonce: str) -> bytes:
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version, type_url=ECDS_TYPE, nonce=nonce
        )
        for name in selected:
            response.resources.add(
                name=name,
                version=version,
                resource=any_pb2.Any(type_url=ECDS_TYPE, value=bodies[name]),
            )
        data: bytes = response.SerializeToString()
        return data

    state_nonce, push_nonce = f"s{number}", f"p{number}"
    return _Version(
        version=version,
        nonce=push_nonce,
        sotw_state=sotw(names, state_nonce),
        sotw_push=sotw(push, push_nonce),
        delta_state=delta(names, state_nonce),
        delta_push=delta(push, push_nonce),
    )


@dataclass(eq=False, slots=True)
class _Stream:
    delta: bool
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pending: bytes | None = None
    initialized: bool = False
    acked: str = ""


class FloorServer:
    """Pushes one pre-serialized response to every stream on command; counts ACKs."""

    def __init__(
        self,
        *,
        names: Sequence[str],
        push_names: Sequence[str] | None = None,
        pad: int = 64,
        admission: bool = True,
    ) -> None:
        self._names = list(names)
        self._push_names = list(push_names) if push_names else self._names[:1]
        self._pad = pad
        self._options = SERVER_OPTIONS + (ADMISSION_OPTIONS if admission else [])
        self._number = 0
        self._current = _build(0, 0, self._names, self._push_names, pad)
        self._streams: set[_Stream] = set()
        self.acked = 0
        self._server: grpc.aio.Server | None = None

    @property
    def payload_sizes(self) -> dict[str, int]:
        return {"state": len(self._current.sotw_state), "push": len(self._current.sotw_push)}

    async def start(self, address: str = "127.0.0.1:0") -> int:
        server = grpc.aio.server(options=self._options)

        def handler(behaviour: Any, request_type: Any) -> grpc.RpcMethodHandler[Any, bytes]:
            return grpc.stream_stream_rpc_method_handler(
                behaviour, request_deserializer=request_type.FromString, response_serializer=None
            )

        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    _ADS,
                    {
                        "StreamAggregatedResources": handler(
                            self._sotw, discovery_pb2.DiscoveryRequest
                        ),
                        "DeltaAggregatedResources": handler(
                            self._delta, discovery_pb2.DeltaDiscoveryRequest
                        ),
                    },
                )
            ]
        )
        port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        return port

    async def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    def push(self, mark: int) -> float:
        """Serialize the change once and wake every stream; returns when (wall clock)."""
        at = time.time()
        self._number += 1
        current = self._current = _build(
            self._number, mark, self._names, self._push_names, self._pad
        )
        self.acked = 0
        for stream in self._streams:
            if stream.initialized:
                stream.pending = current.delta_push if stream.delta else current.sotw_push
            else:
                stream.pending = current.delta_state if stream.delta else current.sotw_state
            stream.wake.set()
        return at

    def status(self) -> dict[str, Any]:
        return {"streams": len(self._streams), "acked": self.acked, "pushes": self._number}

    # -- streams ------------------------------------------------------------

    async def _sotw(self, requests: Any, context: Any) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        stream = _Stream(delta=False)
        if first.version_info != self._current.version:
            stream.pending = self._current.sotw_state
        else:
            stream.initialized = True  # resumes holding the current version
        await self._serve(context, stream)

    async def _delta(self, requests: Any, context: Any) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        stream = _Stream(delta=True)
        held = first.initial_resource_versions
        if any(held.get(name) != self._current.version for name in self._push_names):
            stream.pending = self._current.delta_state
        else:
            stream.initialized = True
        await self._serve(context, stream)

    async def _serve(self, context: Any, stream: _Stream) -> None:
        self._streams.add(stream)
        reader = asyncio.create_task(self._read(context, stream))
        try:
            while True:
                payload, stream.pending = stream.pending, None
                if payload is not None:
                    await context.write(payload)
                    stream.initialized = True
                if reader.done():
                    return
                await stream.wake.wait()
                stream.wake.clear()
        finally:
            reader.cancel()
            self._streams.discard(stream)

    async def _read(self, context: Any, stream: _Stream) -> None:
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                nonce = request.response_nonce
                if nonce == self._current.nonce and stream.acked != nonce:
                    stream.acked = nonce
                    self.acked += 1
        finally:
            stream.wake.set()


# -- control over stdin/stdout ----------------------------------------------


def _reply(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def _control(args: argparse.Namespace) -> None:
    floor = FloorServer(
        names=args.names, push_names=args.push_names, pad=args.pad, admission=not args.no_admission
    )
    port = await floor.start(args.address)
    _reply({"port": port, "sizes": floor.payload_sizes})
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if command["op"] == "push":
                _reply({"at": floor.push(int(command["mark"]))})
            elif command["op"] == "status":
                _reply(floor.status())
            elif command["op"] == "stop":
                break
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await floor.stop()
    _reply({"stopped": True})


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:0")
    parser.add_argument("--names", nargs="+", default=["bench.plugin-0"])
    parser.add_argument("--push-names", nargs="*", default=None)
    parser.add_argument("--pad", type=int, default=64, help="configuration padding (bytes)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--no-admission", action="store_true", help="gRPC's default pending-call limits"
    )
    args = parser.parse_args(None if argv is None else list(argv))
    if args.uvloop:
        import uvloop  # optional: only for the --uvloop comparison

        uvloop.install()
    asyncio.run(_control(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
