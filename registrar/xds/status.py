"""What the xDS process tells the rest of the registrar: connected nodes, what each
ACKed, NACKs (with Envoy's message) and counters, in SQLite.

The xDS server runs in its own process; the API workers render these rows in
``/metrics`` and the CLI shows them (``mesh-registrar xds status``). Counters
and stream rows are written in one transaction per flush (at most once a
second, and at once on a NACK), never per message.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from registrar.store.connection import Connection, transaction

SHORT_TYPES = {
    "type.googleapis.com/envoy.config.listener.v3.Listener": "LDS",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster": "CDS",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "EDS",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": "RDS",
}


@dataclass(slots=True)
class StreamRow:
    stream_id: str
    node_id: str
    peer: str
    connected_at: float
    acked: dict[str, str] = field(default_factory=dict)
    nacks: int = 0
    last_nack: str = ""


class XdsStatus:
    def __init__(self, conn: Connection, replica: str = "") -> None:
        """``replica``: this xDS server's name among replicas sharing one store
        (host:port); its stream rows are its own, so starting it clears only them."""
        self._conn = conn
        self._replica = replica
        self.counters: Counter[tuple[str, str]] = Counter()
        self._flushed: Counter[tuple[str, str]] = Counter()
        self.streams: dict[str, StreamRow] = {}
        self._dirty: set[str] = set()
        self._gone: set[str] = set()

    def reset(self) -> None:
        """At start: rows of a previous run describe streams that no longer exist."""
        self._conn.execute("DELETE FROM mesh_xds_streams WHERE replica = ?", (self._replica,))

    def count(self, name: str, type_url: str = "", n: int = 1) -> None:
        self.counters[(name, SHORT_TYPES.get(type_url, type_url))] += n

    def opened(self, row: StreamRow) -> None:
        self.streams[row.stream_id] = row
        self._dirty.add(row.stream_id)

    def changed(self, stream_id: str) -> None:
        self._dirty.add(stream_id)

    def closed(self, stream_id: str) -> None:
        self.streams.pop(stream_id, None)
        self._dirty.discard(stream_id)
        self._gone.add(stream_id)

    def flush(self, now: float) -> None:
        if not (self._dirty or self._gone or self.counters != self._flushed):
            return
        with transaction(self._conn) as conn:
            conn.executemany("DELETE FROM mesh_xds_streams WHERE stream_id = ?",
                             [(s,) for s in self._gone])
            conn.executemany(
                "INSERT INTO mesh_xds_streams (stream_id, node_id, peer, connected_at,"
                " updated_at, acked, nacks, last_nack, replica)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (stream_id) DO UPDATE SET updated_at = excluded.updated_at,"
                " acked = excluded.acked, nacks = excluded.nacks, last_nack = excluded.last_nack",
                [(r.stream_id, r.node_id, r.peer, r.connected_at, now,
                  json.dumps(r.acked, sort_keys=True), r.nacks, r.last_nack, self._replica)
                 for r in (self.streams[s] for s in self._dirty if s in self.streams)])
            conn.executemany(
                "INSERT INTO mesh_xds_counters (name, type_url, value) VALUES (?, ?, ?)"
                " ON CONFLICT (name, type_url) DO UPDATE"
                " SET value = mesh_xds_counters.value + excluded.value",
                [(k[0], k[1], v - self._flushed[k]) for k, v in self.counters.items()
                 if v != self._flushed[k]])
        self._flushed = Counter(self.counters)
        self._dirty.clear()
        self._gone.clear()


def metrics_text(conn: Connection) -> str:
    """Prometheus text for the xDS server's counters and connected streams."""
    lines = ["# HELP registrar_xds_events_total xDS events by kind (push, ack, nack) and type.",
             "# TYPE registrar_xds_events_total counter"]
    for name, type_url, value in conn.execute(
            "SELECT name, type_url, value FROM mesh_xds_counters ORDER BY name, type_url"):
        lines.append(f'registrar_xds_events_total{{event="{name}",type="{type_url}"}} {value}')
    streams = conn.execute("SELECT count(*) FROM mesh_xds_streams").fetchone()[0]
    lines += ["# HELP registrar_xds_streams Connected ADS streams.",
              "# TYPE registrar_xds_streams gauge", f"registrar_xds_streams {streams}"]
    return "\n".join(lines) + "\n"


def stream_rows(conn: Connection) -> list[dict[str, object]]:
    rows = conn.execute("SELECT stream_id, node_id, peer, connected_at, updated_at, acked, nacks,"
                        " last_nack FROM mesh_xds_streams ORDER BY node_id, stream_id")
    return [{"stream": r[0], "node_id": r[1], "peer": r[2], "connected_at": r[3],
             "updated_at": r[4], "acked": json.loads(r[5]), "nacks": r[6], "last_nack": r[7]}
            for r in rows]
