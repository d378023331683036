"""The registrar client's HTTP/1.1 framing against a scripted TLS server that
holds a real registrar's server certificate (``mesh-registrar init``): every
way a body can be framed, the size limits, and answers that are not HTTP."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agent.registrar_client.http import MAX_HEADER_BYTES, ProtocolError, TlsHttp, TooLarge

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _ask(reg: Any, script: Script, *, max_body: int = 1 << 20) -> Any:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(reg.state_dir / "server-cert.pem",
                               reg.state_dir / "server-key.pem")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(reg.ca_file))
    http = TlsHttp("127.0.0.1", port, timeout=30, max_body=max_body, user_agent="test")
    try:
        return await http.request("GET", "/v1/bundle", f"https://127.0.0.1:{port}/v1/bundle",
                                  ctx=client_ctx, pool_key=None)
    finally:
        http.close()
        server.close()


def _send(data: bytes) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
    return script


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.fixtures.registrar import RegistrarProcess

    registrar = RegistrarProcess(tmp_path_factory.mktemp("registrar"))
    registrar.base_dir.mkdir(parents=True, exist_ok=True)
    registrar.init()
    return registrar


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nDate: x\r\n\r\n{\"a\": true}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\n{\"a\"\r\n7;ext=1\r\n: true}\r\n0\r\nTrailer: t\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"a\": true}",  # ends with the connection
])
def test_each_framing_gives_the_same_body(reg: Any, answer: bytes) -> None:
    response = asyncio.run(_ask(reg, _send(answer)))
    assert (response.status, response.content) == (200, b'{"a": true}')


def test_an_answer_without_headers_and_a_bodiless_304(reg: Any) -> None:
    assert asyncio.run(_ask(reg, _send(b"HTTP/1.1 204 No Content\r\n\r\n"))).content == b""
    response = asyncio.run(_ask(reg, _send(b"HTTP/1.1 304 Not Modified\r\nETag: \"3\"\r\n\r\n")))
    assert (response.status, response.headers["etag"]) == (304, '"3"')


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + b"x" * 2000
    + b"\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 2000,
])
def test_a_body_over_the_limit_is_refused_however_it_is_framed(reg: Any, answer: bytes) -> None:
    with pytest.raises(TooLarge):
        asyncio.run(_ask(reg, _send(answer), max_body=1000))


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH\r\n\r\n",                                       # not HTTP
    b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"cut\"",            # cut short
    b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"y" * MAX_HEADER_BYTES + b"\r\n\r\n",  # huge header
    b"HTTP/1.1 20",                                                    # closed mid-line
])
def test_answers_that_are_not_http_as_we_read_it(reg: Any, answer: bytes) -> None:
    with pytest.raises(ProtocolError):
        asyncio.run(_ask(reg, _send(answer)))


def test_a_connection_closed_before_any_answer_is_a_connection_error(reg: Any) -> None:
    """Reported like a reset (the registrar is unreachable), not as a bad answer."""
    with pytest.raises(ConnectionError):
        asyncio.run(_ask(reg, _send(b"")))
