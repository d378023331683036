"""One ADS stream's protocol state, state-of-the-world (SotW), without I/O.

Per type URL it tracks what was sent (version, nonce, names) and what Envoy
ACKed or NACKed. The rules (Envoy's xDS protocol):

- a request whose ``response_nonce`` is not the last one sent is stale: no reply;
- a request with ``error_detail`` is a NACK of the last response: recorded and
  never answered with the same version again (no retry loop; the next catalog
  change brings a new version);
- otherwise an ACK, or a new subscription: answered when the version or the
  requested names differ from what was last sent;
- LDS and CDS answers carry the full set (omission deletes) at the snapshot's
  version; EDS and RDS carry only the names asked for, at a version of those
  resources alone (``WireSnapshot.version``): a catalog change that touches
  none of them sends this stream nothing of that type.

On a new snapshot, types are pushed in the order CDS, EDS, LDS, RDS, and a CDS
update that removes clusters first sends the union of old and new (so no
listener points at a missing cluster), then the final set after LDS:
make-before-break.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf import any_pb2

from registrar.xds.snapshot import CLUSTER, PUSH_ORDER, WILDCARD_TYPES
from registrar.xds.wire import WireSnapshot

_EMPTY: frozenset[str] = frozenset()
# Name sets seen in requests, one object per distinct set: 1,000 Envoys of a group
# subscribe to the same EDS names, and each would otherwise keep its own two copies.
_SHARED: dict[frozenset[str], frozenset[str]] = {}
_MAX_SHARED = 4096


def shared_names(names: Iterable[str]) -> frozenset[str]:
    found = frozenset(names)
    if not found:
        return _EMPTY
    same = _SHARED.get(found)
    if same is None:
        if len(_SHARED) >= _MAX_SHARED:
            _SHARED.clear()  # a bound, not an eviction policy: sharing is only a saving
        same = _SHARED[found] = found
    return same


@dataclass(slots=True)
class TypeState:
    names: frozenset[str] = frozenset()
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    sent_nonce: str | None = None
    acked_version: str | None = None
    nacked_version: str | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class Reply:
    """One serialized DiscoveryResponse, ready for the wire."""

    type_url: str
    version_info: str
    nonce: str
    data: bytes

    @property
    def resources(self) -> list[any_pb2.Any]:
        return list(DiscoveryResponse.FromString(self.data).resources)


@dataclass(frozen=True)
class Nack:
    type_url: str
    version: str
    message: str


@dataclass(slots=True)
class AdsStream:
    node_id: str
    types: dict[str, TypeState] = field(default_factory=dict)
    _nonce: int = 0
    _sent_clusters: frozenset[str] = frozenset()
    _previous: dict[str, any_pb2.Any] = field(default_factory=dict)

    def _names(self, type_url: str, snap: WireSnapshot) -> frozenset[str]:
        """What this stream is sent of ``type_url``: LDS and CDS the full set, EDS and
        RDS the subscribed names the snapshot has."""
        if type_url in WILDCARD_TYPES:
            return snap.names(type_url)
        return self.types[type_url].names & snap.names(type_url)

    def _respond(self, type_url: str, snap: WireSnapshot,
                 union: tuple[str, frozenset[str]] | None = None) -> Reply:
        """The response from ``snap``; ``union``: (version, names) of a make-before-break
        CDS that still names clusters gone from ``snap``."""
        state = self.types[type_url]
        self._nonce += 1
        state.sent_names = state.names
        state.sent_nonce = str(self._nonce)
        if union is None:
            names = self._names(type_url, snap)
            version = snap.version(type_url, names)
            body = snap.body(type_url, names)
        else:
            version, names = union
            available = snap.packed[type_url]
            body = DiscoveryResponse(version_info=version, type_url=type_url, resources=[
                available[n] if n in available else self._previous[n]
                for n in sorted(names)]).SerializeToString()
        state.sent_version = version
        if type_url == CLUSTER:
            self._sent_clusters = names
        data = body + DiscoveryResponse(nonce=state.sent_nonce).SerializeToString()
        return Reply(type_url, version, state.sent_nonce, data)

    def on_request(self, request: DiscoveryRequest,
                   snap: WireSnapshot) -> tuple[list[Reply], Nack | None]:
        type_url = request.type_url
        if type_url not in snap.packed:
            return [], None  # a type we do not serve (e.g. SDS): Envoy uses local files
        state = self.types.setdefault(type_url, TypeState())
        if request.response_nonce and request.response_nonce != state.sent_nonce:
            return [], None  # stale: superseded by a newer response
        nack = None
        if request.HasField("error_detail"):
            state.nacked_version = state.sent_version
            state.last_error = request.error_detail.message
            nack = Nack(type_url, state.sent_version or "", request.error_detail.message)
        elif request.response_nonce:
            state.acked_version = request.version_info
        state.names = shared_names(request.resource_names)
        version = snap.version(type_url, self._names(type_url, snap))
        names_changed = (type_url not in WILDCARD_TYPES and state.names != state.sent_names)
        if state.sent_version == version and not names_changed:
            return [], nack
        if nack is not None and not names_changed:
            return [], nack  # never re-offer what was just refused
        return [self._respond(type_url, snap)], nack

    def on_snapshot(self, old: WireSnapshot | None, snap: WireSnapshot) -> list[Reply]:
        """The pushes a new snapshot needs, in CDS, EDS, LDS, RDS order."""
        out: list[Reply] = []
        final_cds = False
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if state is None or state.sent_version is None:
                continue  # not subscribed yet: the first request will get it
            if state.sent_version == snap.version(type_url, self._names(type_url, snap)):
                continue  # for EDS and RDS: nothing this stream asked for changed
            if type_url == CLUSTER and old is not None:
                removed = self._sent_clusters - snap.names(CLUSTER)
                if removed:
                    self._previous = {n: old.packed[CLUSTER][n] for n in removed
                                      if n in old.packed[CLUSTER]}
                    union = snap.names(CLUSTER) | frozenset(self._previous)
                    version = snap.versions[CLUSTER]
                    out.append(self._respond(CLUSTER, snap, (f"{version}+keep", union)))
                    final_cds = True
                    continue
            out.append(self._respond(type_url, snap))
        if final_cds:
            out.append(self._respond(CLUSTER, snap))
            self._previous = {}
        return out
