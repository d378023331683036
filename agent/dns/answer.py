"""Pure: a DNS query and the mesh name table in, an answer (or "forward it") out.

A mesh hostname (``orders.shop.mesh``) gets its VIP: an A record for an IPv4
VIP, an AAAA record for an IPv6 one, and for the other family or any other
type an empty NOERROR answer (the name exists; Istio answers the same way), so
the app never waits on an upstream for a name only the mesh knows. Anything
else is forwarded unchanged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 30  # seconds: short, because a service's VIP can change
# The guard's liveness question. ``.invalid`` is reserved (RFC 6761): no real
# name is shadowed by answering it locally, and no upstream is ever asked.
PROBE_NAME = "mesh-agent-dns-probe.invalid"
PROBE_ADDRESS = "127.0.0.1"


def key(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def mesh_answer(query: dns.message.Message, names: Mapping[str, str]
                ) -> dns.message.Message | None:
    """The answer for a mesh name, or None when the query must be forwarded."""
    if len(query.question) != 1 or query.opcode() != 0:
        return None
    question = query.question[0]
    name = key(question.name)
    vip = PROBE_ADDRESS if name == PROBE_NAME else names.get(name)
    if vip is None or question.rdclass != dns.rdataclass.IN:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    response.set_rcode(dns.rcode.NOERROR)
    family = dns.rdatatype.A if ipaddress.ip_address(vip).version == 4 else dns.rdatatype.AAAA
    if question.rdtype == family:
        response.answer.append(dns.rrset.from_text(question.name, TTL, "IN", family, vip))
    return response


def servfail(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.SERVFAIL)
    return response
