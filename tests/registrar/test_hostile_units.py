"""Pure parts behind issue 16's registrar fixes: the log budget, display escaping,
per-address buckets, and the nested transaction."""

from __future__ import annotations

from typing import Any

import pytest

from registrar.api.logbudget import LogBudget
from registrar.api.ratelimit import PerAddressLimiter, address_key
from registrar.config import Rate
from registrar.display import has_unsafe, printable
from registrar.store.connection import transaction
from tests.fakes.clock import FakeClock


def test_log_budget_allows_a_burst_per_key_then_reports_what_it_held_back() -> None:
    clock = FakeClock()
    budget = LogBudget(clock, burst=3, every=60.0)
    taken = [budget.take("a") for _ in range(10)]
    assert taken[:2] == ["", ""] and taken[2] is not None and "held back" in taken[2]
    assert taken[3:] == [None] * 7
    assert budget.take("b") == ""  # another cause has its own budget
    clock.advance(60)
    assert budget.take("a") == " (7 more held back)"
    assert budget.take("a") == ""


@pytest.mark.parametrize(("text", "shown"), [
    ("vm-1.example", "vm-1.example"),
    ("vm\x1b[2J", "vm\\x1b[2J"),
    ("a\nb\rc\x00", "a\\x0ab\\x0dc\\x00"),
    ("\u202eevil", "\\u202eevil"),
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("back\\slash", "back\\\\slash"),
    ("caf\u00e9 \u6771\u4eac", "caf\u00e9 \u6771\u4eac"),  # printable Unicode stays
    ("\U000e0001tag", "\\U000e0001tag"),
])
def test_printable_escapes_what_could_drive_a_terminal(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert has_unsafe(text) == (text != shown and "\\" not in text)


def test_per_address_buckets_group_ipv6_by_64_and_forget_the_oldest() -> None:
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("2001:db8:0:1::1") != address_key("2001:db8::1")
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    clock = FakeClock()
    limiter = PerAddressLimiter(Rate(1.0, 2), clock, max_tracked=2)
    assert [limiter.retry_after("10.0.0.1") for _ in range(3)] == [None, None, 1]
    assert limiter.retry_after("10.0.0.2") is None
    limiter.retry_after("10.0.0.3")  # over max_tracked: 10.0.0.1 is forgotten
    assert limiter.retry_after("10.0.0.1") is None


def test_a_nested_transaction_is_a_savepoint_the_outer_one_decides(store_db: Any) -> None:
    conn = store_db
    conn.execute("CREATE TABLE t (v INTEGER)")
    with pytest.raises(RuntimeError), transaction(conn, immediate=False):
        conn.execute("INSERT INTO t VALUES (1)")
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("after the inner unit committed")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(RuntimeError), transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("inner only")
    assert [r[0] for r in conn.execute("SELECT v FROM t")] == [1]
    assert not conn.in_transaction
