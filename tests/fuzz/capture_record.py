"""Target ``capture_record``: ``<state_dir>/capture.json`` as the agent reads it.

Allowed: a ``CaptureRecord`` (which must survive an encode/decode round trip
unchanged, since the agent rewrites the file with every phase) or
``RecordError``. Anything else would end a daemon that is trying to remove its
capture rules, leaving traffic redirected.
"""

from __future__ import annotations

from agent.capture.record import RecordError, decode, encode
from tests.fuzz.mutate import json_bytes

mutate = json_bytes  # scripts/fuzz's structure-aware mutator for this target


def check(data: bytes) -> None:
    try:
        record = decode(data)
    except RecordError:
        return
    assert decode(encode(record)) == record, record
