"""HTTP/1.1 over TLS to the registrar, on asyncio's own streams.

The agent asks one server a handful of small JSON questions, so it needs no
general HTTP library (httpx and its dependencies were about 2 MiB of the
agent's resident memory). What it does need:

* every connection verified by the TLS context the caller built (the pinned
  anchor, the client certificate for mTLS);
* one kept-alive connection per client certificate, so a VM that reports its
  health every few seconds pays one TLS handshake per certificate generation
  instead of one per report. A connection is only reused while the server has
  not closed it; a request that fails on a reused connection before any byte
  of the answer arrived is sent once more on a fresh one (the server closed it
  idle: it never saw the request). Calls without a client certificate (the
  challenge and the token attestation, which spends a one-time token) never
  reuse a connection, so they are never sent twice;
* bounded answers: headers up to 64 KiB, bodies up to ``max_body`` bytes,
  whichever framing the server uses (Content-Length, chunked, or until close).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as we can read it (or too large)."""


class TooLarge(ProtocolError):
    """The answer's body is over the limit."""


class _Stale(Exception):
    """A reused connection was closed before any answer byte: send again."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names lower-cased; a repeated header keeps the last
    content: bytes
    url: str


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.transport.is_closing()

    def close(self) -> None:
        self.writer.close()


class TlsHttp:
    """Requests to one ``https://host:port``; ``pool_key`` names the TLS context a
    kept connection was made with (None: do not keep the connection)."""

    def __init__(self, host: str, port: int, *, timeout: float, max_body: int,
                 user_agent: str) -> None:
        self.host = host
        self.port = port
        self._timeout = timeout
        self._max_body = max_body
        self._user_agent = user_agent
        self._idle: dict[object, _Connection] = {}
        self._closed = False
        authority = f"[{host}]" if ":" in host else host
        self._host_header = authority if port == 443 else f"{authority}:{port}"

    async def request(self, method: str, target: str, url: str, *, ctx: ssl.SSLContext,
                      pool_key: object | None, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> Response:
        """Raises OSError (ssl.SSLError included), TimeoutError, ProtocolError."""
        head = self._head(method, target, body, headers, keep=pool_key is not None)
        conn = self._idle.pop(pool_key, None) if pool_key is not None else None
        if conn is not None and not conn.usable():
            conn.close()
            conn = None
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, url, pool_key, reused=True)
            except _Stale:
                pass
        conn = await self._connect(ctx)
        try:
            return await self._exchange(conn, head, body, url, pool_key, reused=False)
        except _Stale as exc:  # not reused: cannot happen, but never loop
            raise ConnectionResetError("the connection closed before an answer") from exc

    def close(self) -> None:
        """Close the kept connections and keep none from now on (a new client
        replaced this one, or the agent stops)."""
        self._closed = True
        for conn in self._idle.values():
            conn.close()
        self._idle.clear()

    async def _connect(self, ctx: ssl.SSLContext) -> _Connection:
        async with asyncio.timeout(self._timeout):
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=ctx, server_hostname=self.host,
                ssl_handshake_timeout=self._timeout, limit=MAX_HEADER_BYTES)
        return _Connection(reader, writer)

    def _head(self, method: str, target: str, body: bytes | None,
              headers: Mapping[str, str] | None, *, keep: bool) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}",
                 f"User-Agent: {self._user_agent}", "Accept: application/json",
                 f"Connection: {'keep-alive' if keep else 'close'}"]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes | None, url: str,
                        pool_key: object | None, *, reused: bool) -> Response:
        keep = False
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    conn.writer.write(head + (body or b""))
                    await conn.writer.drain()
                    status_line = await conn.reader.readuntil(b"\r\n")
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    partial = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
                    if reused and not partial:
                        raise _Stale from exc
                    if partial:
                        raise ProtocolError("the connection closed in the middle of an "
                                            "answer") from exc
                    if isinstance(exc, ConnectionError):
                        raise
                    # Like a reset: the caller reports the registrar as unreachable.
                    raise ConnectionResetError("the connection closed before an answer") \
                        from exc
                response, keep = await self._read(conn.reader, status_line, url)
        except asyncio.LimitOverrunError as exc:
            raise ProtocolError("answer header over 64 KiB") from exc
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError("the connection closed in the middle of an answer") from exc
        finally:
            if keep and pool_key is not None and pool_key not in self._idle \
                    and not self._closed:
                self._idle[pool_key] = conn
            else:
                conn.close()
        return response

    async def _read(self, reader: asyncio.StreamReader, status_line: bytes,
                    url: str) -> tuple[Response, bool]:
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        size = len(status_line)
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            size += len(line)
            if size > MAX_HEADER_BYTES:
                raise ProtocolError("answer header over 64 KiB")
            name, sep, value = line.decode("latin-1").partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        keep = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if status in (204, 304) or 100 <= status < 200:
            return Response(status, headers, b"", url), keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            content = await self._chunked(reader)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise ProtocolError("Content-Length is not a number") from None
            if not 0 <= length <= self._max_body:
                raise TooLarge(f"answer body of {length} bytes (limit {self._max_body})")
            content = await reader.readexactly(length)
        else:
            keep = False  # the body ends with the connection
            content = await reader.read(self._max_body + 1)
            while len(content) <= self._max_body and (more := await reader.read(65536)):
                content += more
            if len(content) > self._max_body:
                raise TooLarge(f"answer body over {self._max_body} bytes")
        return Response(status, headers, content, url), keep

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        content = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError("bad chunk size") from None
            if size == 0:
                # Trailers (if any) end with an empty line.
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return bytes(content)
            if len(content) + size > self._max_body:
                raise TooLarge(f"answer body over {self._max_body} bytes")
            content += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise ProtocolError("bad chunk end")
