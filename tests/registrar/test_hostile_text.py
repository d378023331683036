"""Client-chosen text: never printed raw on an operator's terminal, never in the log."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key

# An OSC window title, a screen clear, a bell and a right-to-left override.
ESCAPES = "vm\x1b]0;owned\x07\x1b[2J\u202eevil"
RAW = ("\x1b", "\x07", "\u202e")


def _token_state(reg: RegistrarProcess) -> str:
    return str(json.loads(reg.cli("token", "list", "--json").stdout)[-1]["state"])


def test_a_hostname_holding_control_characters_is_refused_before_the_token_is_spent(
        registrar: RegistrarProcess) -> None:
    token = registrar.create_token("web")
    with calls.client(registrar) as c:
        for hostile in (ESCAPES, "vm\nforged: line", "vm\u200b", "vm\x00"):
            status, body = calls.post(c, "/v1/attest", content=json.dumps(calls.attest_body(
                token, csr_pem(ec_key()), hostname=hostile)).encode(),
                headers={"content-type": "application/json"})
            assert (status, body["reason"]) == (400, "bad_request"), hostile
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
            token, csr_pem(ec_key()), addresses=["10.0.0.1\x1b[2J"]))
        assert (status, body["reason"]) == (400, "bad_request")
    assert _token_state(registrar) == "valid"


def test_stored_strings_are_escaped_in_cli_output(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory()
    with calls.client(reg) as c:
        assert calls.post(c, "/v1/attest", json=calls.attest_body(
            reg.create_token("default"), csr_pem(ec_key()), hostname="vm-1"))[0] == 200
    # Rows a registrar without the input check could have stored.
    reg.sql("UPDATE workloads SET hostname = ?", (ESCAPES,))
    reg.sql("INSERT INTO mesh_xds_streams (stream_id, node_id, peer, connected_at,"
            " updated_at, acked, nacks, last_nack) VALUES ('1', ?, 'ipv4:1.2.3.4', 0, 0,"
            " '{}', 1, ?)", (ESCAPES, "type version 1: " + ESCAPES))
    for command in (("workloads", "list"), ("xds", "status")):
        out = reg.cli(*command).stdout
        assert not any(char in out for char in RAW), (command, out)
        assert "vm\\x1b]0;owned\\x07\\x1b[2J\\u202eevil" in out, (command, out)
        assert len(out.strip().splitlines()) == 1
    # JSON escapes by itself; the value round-trips exactly.
    listed = reg.cli("workloads", "list", "--json").stdout
    assert not any(char in listed for char in RAW)
    assert json.loads(listed)[0]["hostname"] == ESCAPES


def test_client_chosen_text_never_reaches_the_log(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory()
    token = reg.create_token("default")
    mark = "HOSTILE\x1b[2J"  # every string below carries it
    json_headers = {"content-type": "application/json"}
    requests: list[tuple[str, dict[str, object]]] = [
        ("/v1/attest", {"json": {"evidence": {"type": mark}, "csr": csr_pem(ec_key())}}),
        ("/v1/attest", {"json": {"evidence": {"type": "join_token", "token": mark},
                                 "csr": csr_pem(ec_key())}}),
        ("/v1/attest", {"json": {**calls.attest_body(token, "x"), mark: 1}}),
        ("/v1/attest", {"json": calls.attest_body(token, csr_pem(ec_key()),
                                                  hostname="HOSTILE-" + "h" * 300)}),
        ("/v1/attest", {"json": calls.attest_body(token, csr_pem(ec_key(), uris=(
            "spiffe://example.org/HOSTILE",)))}),
        ("/v1/attest", {"json": calls.attest_body(token, "-----BEGIN HOSTILE-----")}),
        ("/v1/attest", {"content": b"HOSTILE", "headers": {"content-type": "text/HOSTILE"}}),
        ("/v1/attest", {"content": json.dumps({"HOSTILE": [[[[[[[[[[1]]]]]]]]]]}).encode(),
                        "headers": json_headers}),
        ("/v1/renew", {"json": {"csr": csr_pem(ec_key()), "hostname": mark}}),
        ("/v1/HOSTILE", {"json": {}}),
    ]
    with calls.client(reg, headers={"user-agent": "HOSTILE", "x-hostile": "HOSTILE"}) as c:
        for path, kwargs in requests:
            response = c.post(path, **kwargs)  # type: ignore[arg-type]
            assert 400 <= response.status_code < 500, (path, response.text)
    # A request line and a header aiohttp cannot parse.
    for line in (b"GET /HOSTILE\x1b HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"POST /v1/attest HTTP/1.1\r\nHost: x\r\nX: " + b"HOSTILE" * 3000 + b"\r\n\r\n"):
        with calls.tls(reg).wrap_socket(socket.create_connection(("127.0.0.1", reg.port),
                                                                  timeout=10),
                                        server_hostname="127.0.0.1") as s:
            s.sendall(line)
            assert s.recv(4096).startswith(b"HTTP/1.1 4")
    reg.stop()
    log = reg.log_text()
    for reason in ("unsupported_evidence", "token_invalid", "bad_request", "csr_identity_mismatch",
                   "csr_invalid", "unsupported_media_type", "client_cert_required"):
        assert f"rejected reason={reason} " in log, reason
    assert "HOSTILE" not in log and "hostile" not in log.lower(), log[-3000:]
    assert "\x1b" not in log
