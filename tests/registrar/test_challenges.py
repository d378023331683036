"""/v1/challenge through the real server: a bucket per client address, and expiry."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls, spec
from tests.registrar.csrs import csr_pem, ec_key

GCE = {"join_token": {}, "gce": {"groups": [{"group": "default", "match": {"project_id": "p"}}]}}


def _from(reg: RegistrarProcess, source: str) -> httpx.Client:
    return httpx.Client(base_url=reg.url, verify=calls.tls(reg), timeout=30,
                        transport=httpx.HTTPTransport(verify=calls.tls(reg),
                                                      local_address=source))


def test_each_client_address_has_its_own_challenge_bucket(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(config={"evidence": GCE, "limits": {
        "challenge_per_address": {"per_second": 0.01, "burst": 3}}})
    with _from(reg, "127.0.0.1") as one, _from(reg, "127.0.0.2") as two:
        statuses = [calls.post(one, "/v1/challenge")[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        response = one.post("/v1/challenge")
        assert spec.check(response)["reason"] == "rate_limited"
        assert int(response.headers["Retry-After"]) >= 1
        # Another address is not held back by the first one's flood.
        assert calls.post(two, "/v1/challenge")[0] == 200
    assert reg.sql("SELECT count(*) FROM challenges") == [(4,)]


def test_a_challenge_expires(registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(config={"evidence": GCE, "challenge_ttl": "1s"})

    def attest(c: httpx.Client, nonce: str) -> str:
        status, body = calls.post(c, "/v1/attest", json={
            "evidence": {"type": "gce", "token": "not-a-jwt"}, "csr": csr_pem(ec_key()),
            "challenge": nonce})
        assert status == 401
        return str(body["reason"])

    with calls.client(reg) as c:
        stale = calls.post(c, "/v1/challenge")[1]["nonce"]
        time.sleep(1.5)
        assert attest(c, stale) == "challenge_invalid"
        fresh = calls.post(c, "/v1/challenge")[1]["nonce"]
        assert attest(c, fresh) != "challenge_invalid"  # taken; the evidence is refused
        assert attest(c, fresh) == "challenge_invalid"  # and used up


def test_an_oversized_expect_100_continue_on_challenge_is_a_413_the_spec_lists(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    import socket
    reg = registrar_factory(config={"evidence": GCE})
    with calls.tls(reg).wrap_socket(socket.create_connection(("127.0.0.1", reg.port),
                                                             timeout=10),
                                    server_hostname="127.0.0.1") as s:
        s.sendall(b"POST /v1/challenge HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        while len(body) < int(headers["Content-Length"]):
            body += s.recv(65536)
    response = httpx.Response(int(lines[0].split()[1]), headers=headers, content=body,
                              request=httpx.Request("POST", f"{reg.url}/v1/challenge"))
    assert spec.check(response)["reason"] == "body_too_large"
