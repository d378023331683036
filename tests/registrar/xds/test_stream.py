"""The SotW protocol rules of one ADS stream, without gRPC: versions, nonces,
ACK/NACK, stale nonces, EDS names, push order and make-before-break."""

from __future__ import annotations

from dataclasses import replace

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from google.rpc.status_pb2 import Status

from registrar.catalog.model import Catalog
from registrar.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, build
from registrar.xds.stream import AdsStream
from registrar.xds.wire import WireSnapshot, to_wire
from tests.registrar.xds.catalogs import GROUPS, LEDGER, SHOP

NODE = GROUPS["frontend"].spiffe_id
ORDERS_CLA = "outbound|9090||orders.shop.mesh"


def _snap(catalog: Catalog = SHOP) -> WireSnapshot:
    return to_wire(build(catalog, NODE))


def _req(type_url: str, *, nonce: str = "", version: str = "", names: tuple[str, ...] = (),
         error: str = "") -> DiscoveryRequest:
    request = DiscoveryRequest(node=Node(id=NODE), type_url=type_url, response_nonce=nonce,
                               version_info=version, resource_names=names)
    if error:
        request.error_detail.CopyFrom(Status(code=3, message=error))
    return request


def test_first_request_ack_and_stale_nonce() -> None:
    snap, stream = _snap(), AdsStream(NODE)
    (cds,), nack = stream.on_request(_req(CLUSTER), snap)
    assert nack is None and cds.version_info == snap.versions[CLUSTER]
    assert len(cds.resources) == len(snap.packed[CLUSTER])  # CDS: the full set
    assert stream.on_request(_req(CLUSTER, nonce=cds.nonce, version=cds.version_info),
                             snap) == ([], None)  # ACK: nothing to send
    assert stream.types[CLUSTER].acked_version == cds.version_info
    assert stream.on_request(_req(CLUSTER, nonce="old"), snap) == ([], None)  # stale


def test_eds_answers_the_names_asked_and_resubscription() -> None:
    snap, stream = _snap(), AdsStream(NODE)
    (eds,), _ = stream.on_request(_req(ENDPOINT, names=(ORDERS_CLA,)), snap)
    assert len(eds.resources) == 1
    (eds2,), _ = stream.on_request(_req(ENDPOINT, nonce=eds.nonce, version=eds.version_info,
                                        names=(ORDERS_CLA, "outbound|5432||ledger.shop.mesh")),
                                   snap)
    assert len(eds2.resources) == 2  # new names are answered at the same version


def test_nack_is_recorded_and_not_answered_again() -> None:
    snap, stream = _snap(), AdsStream(NODE)
    (lds,), _ = stream.on_request(_req(LISTENER), snap)
    responses, nack = stream.on_request(_req(LISTENER, nonce=lds.nonce, error="bad port"), snap)
    assert responses == [] and nack is not None and nack.message == "bad port"
    assert stream.types[LISTENER].nacked_version == lds.version_info
    # Envoy repeats its request with the same nonce: still nothing (no loop).
    assert stream.on_request(_req(LISTENER, nonce=lds.nonce, error="bad port"), snap)[0] == []


def test_push_order_and_make_before_break_on_removal() -> None:
    old, stream = _snap(), AdsStream(NODE)
    for type_url in (CLUSTER, LISTENER):
        (r,), _ = stream.on_request(_req(type_url), old)
        stream.on_request(_req(type_url, nonce=r.nonce, version=r.version_info), old)
    (r,), _ = stream.on_request(_req(ENDPOINT, names=(ORDERS_CLA,)), old)
    new = _snap(replace(SHOP, services=(LEDGER,)))  # orders removed
    pushes = stream.on_snapshot(old, new)
    kinds = [p.type_url for p in pushes]
    assert kinds == [CLUSTER, ENDPOINT, LISTENER, CLUSTER]
    assert pushes[0].version_info.endswith("+keep")
    assert len(pushes[0].resources) == len(new.packed[CLUSTER]) + 1  # the old cluster kept
    assert pushes[-1].version_info == new.versions[CLUSTER]
    assert len(pushes[-1].resources) == len(new.packed[CLUSTER])
    assert stream.on_snapshot(new, new) == []  # nothing changed, nothing sent


def test_a_change_to_unsubscribed_endpoints_sends_no_eds() -> None:
    """EDS is versioned per subscribed name set: a new service (a cluster this stream
    has not asked endpoints for yet) pushes CDS and LDS, not an unchanged EDS."""
    old, stream = _snap(replace(SHOP, services=SHOP.services[:1])), AdsStream(NODE)
    assert ORDERS_CLA in old.packed[ENDPOINT]
    for type_url, names in ((CLUSTER, ()), (LISTENER, ()), (ENDPOINT, (ORDERS_CLA,))):
        (r,), _ = stream.on_request(_req(type_url, names=names), old)
        stream.on_request(_req(type_url, nonce=r.nonce, version=r.version_info, names=names),
                          old)
    new = _snap(replace(SHOP, services=(*SHOP.services[:1], LEDGER)))
    assert new.versions[ENDPOINT] != old.versions[ENDPOINT]
    assert [p.type_url for p in stream.on_snapshot(old, new)] == [CLUSTER, LISTENER]
    # Subscribing to the new cluster's endpoints is answered (new names).
    (eds,), _ = stream.on_request(_req(ENDPOINT, nonce=stream.types[ENDPOINT].sent_nonce or "",
                                       names=(ORDERS_CLA, "outbound|5432||ledger.shop.mesh")),
                                  new)
    assert len(eds.resources) == 2
