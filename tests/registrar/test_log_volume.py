"""10,000 hostile requests write a bounded number of log lines.

The bound: a refusal is logged at most 10 times per cause per minute
(registrar/api/logbudget.py; a cause is an operation and its reason, an
unparseable request's status, or a refused TLS handshake's cause), 404/405
answers and client disconnects are not logged at all, and an internal error is
logged once per cause a minute (api/faults.py; none may happen here). So over
E seconds the log grows by at most 10 x causes x (floor(E / 60) + 1) lines
whatever the number of requests; the mix below reaches about 10 causes, i.e.
about 100 lines a minute, against 10,000 requests.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Callable

import httpx

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls, spec
from tests.registrar.csrs import csr_pem, ec_key

TOTAL = 10_000
PER_CAUSE = 10  # registrar.api.logbudget.BURST
JSON = {"content-type": "application/json"}
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ registrar")


def _http_requests(csr: str) -> list[tuple[str, str, dict[str, object]]]:
    """(method, path, httpx kwargs) for the kinds a normal client connection can carry."""
    return [
        ("POST", "/v1/attest", {"content": b"{not json", "headers": JSON}),
        ("POST", "/v1/attest", {"json": calls.attest_body("A" * 43, "-----BEGIN NOTHING")}),
        ("POST", "/v1/attest", {"json": calls.attest_body("A" * 43, csr)}),
        ("POST", "/v1/attest", {"content": b"x=1", "headers": {"content-type": "text/plain"}}),
        ("POST", "/v1/attest", {"content": json.dumps(calls.attest_body(
            "\ud800", csr)).encode(), "headers": JSON}),
        ("POST", "/v1/attest", {"json": {"evidence": {"type": "tpm\x1b"}, "csr": csr}}),
        ("POST", "/v1/renew", {"json": {"csr": csr}}),
        ("GET", "/v1/nothing-here", {}),
        ("DELETE", "/v1/attest", {}),
        ("POST", "/v1/challenge", {}),
    ]


RAW = [
    # oversized body (declared), never sent
    b"POST /v1/attest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 10000000\r\n\r\n",
    # a disconnect mid-body
    b"POST /v1/attest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n{\"csr\": \"",
    # an unparseable request line
    b"\x00\x01 garbage \x1b[2J\r\n\r\n",
]


async def _flood(reg: RegistrarProcess) -> dict[str, int]:
    csr = csr_pem(ec_key())
    kinds = _http_requests(csr)
    statuses: dict[str, int] = {}
    rng = random.Random(16)
    raw_count = TOTAL // 10
    plan = [rng.randrange(len(kinds)) for _ in range(TOTAL - raw_count)]

    async def http_worker(share: list[int]) -> None:
        async with httpx.AsyncClient(base_url=reg.url, verify=calls.tls(reg),
                                     timeout=60) as c:
            for index in share:
                method, path, kwargs = kinds[index]
                response = await c.request(method, path, **kwargs)  # type: ignore[arg-type]
                spec.check_any(response)  # status and reason are the spec's for the path
                key = f"{path}:{response.status_code}"
                statuses[key] = statuses.get(key, 0) + 1

    async def raw_worker(count: int, offset: int) -> None:
        for i in range(count):
            payload = RAW[(i + offset) % len(RAW)]
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", reg.port, ssl=calls.tls(reg), server_hostname="127.0.0.1")
            writer.write(payload)
            await writer.drain()
            if payload.endswith(b'"'):  # the disconnect: gone before the body is complete
                writer.transport.abort()
                continue
            head = await reader.read(64)
            statuses[f"raw:{head[9:12].decode()}"] = statuses.get(
                f"raw:{head[9:12].decode()}", 0) + 1
            writer.close()

    workers = 16
    await asyncio.gather(
        *(http_worker(plan[w::workers]) for w in range(workers)),
        *(raw_worker(raw_count // 4, w) for w in range(4)))
    return statuses


def test_10000_hostile_requests_write_a_bounded_number_of_log_lines(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    unlimited = {"per_second": 1_000_000, "burst": 10_000_000}
    reg = registrar_factory(config={"limits": {"rate": {
        family: dict(unlimited) for family in ("attest", "renew", "challenge", "read")}}})
    before = len(reg.log_text().splitlines())
    started = time.monotonic()
    statuses = asyncio.run(_flood(reg))
    elapsed = time.monotonic() - started
    assert calls.healthy(reg)
    reg.stop()
    assert sum(statuses.values()) >= TOTAL - TOTAL // 10 // 3 - 4, statuses
    assert not any(key.endswith(":500") for key in statuses), statuses
    lines = reg.log_text().splitlines()[before:]
    # Each line is one log record (no traceback, no echoed request with a newline).
    assert all(LINE.match(line) for line in lines), [x for x in lines if not LINE.match(x)]
    assert not any("Traceback" in line or "internal error" in line for line in lines)
    causes = {re.sub(r" remote=\S+.*| from \S+| \(\d+ more held back\)|"
                     r" \(lines like this .*", "", line.split(": ", 1)[1]) for line in lines
              if "serving" not in line and "stopping" not in line}
    windows = int(elapsed // 60) + 1
    bound = PER_CAUSE * len(causes) * windows + 2  # + start and stop lines
    print(f"{TOTAL} requests in {elapsed:.0f} s: {len(lines)} log lines, {len(causes)} "
          f"causes, bound {bound}; statuses {statuses}")
    assert len(causes) <= 12, causes
    assert len(lines) <= bound, "\n".join(lines)
    assert len(lines) <= 12 * PER_CAUSE * windows + 2
