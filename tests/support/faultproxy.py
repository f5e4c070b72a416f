"""A TCP fault proxy on loopback, toxiproxy's faults in one small asyncio
module (toxiproxy itself is a Go server that no package registry reachable
here ships): put it between the service and a dependency (an upstream,
Redis, PostgreSQL) and switch faults while traffic flows.

    with FaultProxy("127.0.0.1", 6379) as proxy:      # listens on proxy.port
        proxy.latency(0.5)          # every chunk, either way, waits 0.5 s
        proxy.bandwidth(2048)       # the dependency's answers trickle at 2 KiB/s
        proxy.reset_after(200)      # RST each connection after 200 answer bytes
        proxy.blackhole()           # accept, read, never answer (old connections go silent too)
        proxy.refuse()              # close the port: connections are refused, open ones reset
        proxy.heal()                # pass everything through again

A fault applies to connections already open and to new ones, from their next
chunk on. `connections` counts accepted connections. The proxy runs its own
event loop in a daemon thread; every method may be called from any thread.

Failure behaviour: a dependency that refuses the proxy's connection makes the
proxy reset the client's; an error in one connection ends that connection
only. `close()` resets every connection and stops the loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    """What the proxy does to traffic now (immutable; replaced whole)."""

    latency: float = 0.0            # seconds before each chunk is forwarded, either direction
    rate: int = 0                   # bytes per second from the dependency to the client (0: no limit)
    reset_after: int | None = None  # answer bytes per connection before it is reset
    blackhole: bool = False         # read everything, forward nothing


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.fault = Fault()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="faultproxy")

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self._call(self._close_all())
        self._call(self._cancel_tasks())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coro) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- faults ------------------------------------------------------------------------------------
    def heal(self) -> None:
        """No fault: pass everything through (and listen again after `refuse`)."""
        self.fault = Fault()
        if self._server is None:
            self._call(self._listen())

    def latency(self, seconds: float) -> None:
        self.fault = Fault(latency=seconds)

    def bandwidth(self, bytes_per_second: int) -> None:
        self.fault = Fault(rate=bytes_per_second)

    def reset_after(self, nbytes: int) -> None:
        self.fault = Fault(reset_after=nbytes)

    def blackhole(self) -> None:
        self.fault = Fault(blackhole=True)

    def refuse(self) -> None:
        """Close the listening port (new connections are refused) and reset open ones."""
        self._call(self._close_all())

    # -- machinery ---------------------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_all(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        upstream_writer = None
        try:
            if self.fault.blackhole:
                while await reader.read(65536):  # swallow until the client gives up
                    pass
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)
                return
            self._writers.add(upstream_writer)
            answered = [0]
            await asyncio.gather(
                self._pipe(reader, upstream_writer, answers=False, answered=answered, client=writer),
                self._pipe(upstream_reader, writer, answers=True, answered=answered, client=writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled: the proxy is closing; the connection goes with it
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    self._writers.discard(w)
                    with contextlib.suppress(Exception):
                        w.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, answers: bool,
                    answered: list[int], client: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                fault = self.fault
                if fault.blackhole:
                    continue
                if fault.latency:
                    await asyncio.sleep(fault.latency)
                if answers and fault.reset_after is not None:
                    room = fault.reset_after - answered[0]
                    if room < len(data):
                        if room > 0:
                            sink.write(data[:room])
                            await sink.drain()
                        await asyncio.sleep(0.05)  # let the partial answer reach the client first
                        _reset(client)
                        return
                if answers and fault.rate:
                    step = max(1, fault.rate // 20)
                    for start in range(0, len(data), step):
                        sink.write(data[start:start + step])
                        await sink.drain()
                        await asyncio.sleep(step / fault.rate)
                else:
                    sink.write(data)
                    await sink.drain()
                if answers:
                    answered[0] += len(data)
        except (OSError, ConnectionError):
            pass
        finally:
            if sink.can_write_eof() and not sink.is_closing():
                with contextlib.suppress(OSError):
                    sink.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
