"""Web sites on 127.0.0.1, one per port (a "domain" each), that count what they are asked:
every request's time, method and path, and the most requests in flight at once. Each answers
as its `respond` function says. Used by `jobstream bench` (section crawl) and the tests of
`http.warm`. A minimal HTTP/1.1 server with keep-alive: requests without a body only."""

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

MAX_HEAD_BYTES = 64 * 1024
READ_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    # Requests for this path (any method) before this one.
    seen: int
    at: float


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"<html>ok</html>"
    delay_s: float = 0.0


Respond = Callable[[Request], Reply]


def always_ok(request: Request) -> Reply:
    return Reply()


REASONS = {
    200: "OK",
    301: "Moved Permanently",
    302: "Found",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Site:
    def __init__(self, respond: Respond = always_ok) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._per_path: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"http://{self.domain}{path}"

    def times(self, path_prefix: str = "/") -> list[float]:
        """When each request (for paths under `path_prefix`) arrived, in order."""
        return [r.at for r in self.requests if r.path.startswith(path_prefix)]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is done."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except asyncio.IncompleteReadError:
            return False
        if len(head) > MAX_HEAD_BYTES:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        request = Request(method, path, headers, self._per_path[path], time.monotonic())
        self._per_path[path] += 1
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self.respond(request)
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            writer.write(_encode(reply, head_only=method == "HEAD"))
            await writer.drain()
        finally:
            self.in_flight -= 1
        return headers.get("connection", "").lower() != "close"


def _encode(reply: Reply, *, head_only: bool) -> bytes:
    lines = [f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}"]
    headers = {"content-length": str(len(reply.body)), "content-type": "text/html", **reply.headers}
    lines += [f"{name}: {value}" for name, value in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + reply.body


@contextlib.asynccontextmanager
async def serving(*sites: Site) -> AsyncIterator[tuple[Site, ...]]:
    """Start the sites, each on a free port of 127.0.0.1; stop them when the block ends."""
    try:
        for site in sites:
            await site.start()
        yield sites
    finally:
        for site in sites:
            await site.stop()


def rate_per_s(times: list[float]) -> float:
    """Requests per second between the first and the last of `times`."""
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


async def wait_until(predicate: Callable[[], Awaitable[bool]], *, timeout_s: float) -> None:
    async def poll() -> None:
        while not await predicate():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout_s)
