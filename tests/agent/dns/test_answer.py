"""DNS answers from the mesh name table (pure), and resolv.conf parsing."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from agent.dns.answer import mesh_answer
from agent.dns.resolv import nameservers

NAMES = {"orders.shop.mesh": "240.240.0.1", "v6.shop.mesh": "fd00::10"}


def ask(name: str, rdtype: str = "A") -> dns.message.Message | None:
    return mesh_answer(dns.message.make_query(name, rdtype), NAMES)


def test_mesh_name_gets_its_vip() -> None:
    answer = ask("orders.shop.mesh.")
    assert answer is not None and answer.rcode() == dns.rcode.NOERROR
    assert answer.flags & dns.flags.AA
    (rrset,) = answer.answer
    assert [r.to_text() for r in rrset] == ["240.240.0.1"] and rrset.ttl == 30


def test_case_insensitive() -> None:
    answer = ask("Orders.SHOP.mesh")
    assert answer is not None and answer.answer[0][0].to_text() == "240.240.0.1"


def test_other_family_and_types_are_empty_noerror() -> None:
    for name, rdtype in (("orders.shop.mesh", "AAAA"), ("orders.shop.mesh", "MX"),
                         ("v6.shop.mesh", "A")):
        answer = ask(name, rdtype)
        assert answer is not None and answer.rcode() == dns.rcode.NOERROR
        assert answer.answer == []
    answer = ask("v6.shop.mesh", "AAAA")
    assert answer is not None and answer.answer[0][0].to_text() == "fd00::10"


def test_everything_else_is_forwarded() -> None:
    assert ask("example.org") is None
    assert ask("shop.mesh") is None  # a parent of a mesh name is not a mesh name
    assert ask("x.orders.shop.mesh") is None


def test_nameservers() -> None:
    text = ("# comment\nsearch example\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n"
            "nameserver bogus\nnameserver 10.0.0.2\nnameserver 10.0.0.3 ; x\n"
            "nameserver 10.0.0.4\n")
    assert nameservers(text) == ("10.0.0.2", "fe80::1", "10.0.0.3")
