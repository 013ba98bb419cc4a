"""Ready to shard by outlet: every table that holds an outlet's data carries the outlet and its
merchant (`outlet_id`, `merchant_nif`, both NOT NULL), on both backends, and every row written by
a realistic workload (HTTP: registry, enrollment, credentials, online seals, reconciliation with a
gap and a rejection, devices, DGI forwarding, dashboard) carries its outlet's merchant.

A table added without the keys fails here, unless it is added to `GLOBAL_TABLES` with the reason
it holds no outlet's data.
"""
from __future__ import annotations

from datetime import timedelta

import pytest

from cloud_stub import forwarding
from cloud_stub.repository import Store

from cloud_helpers import invoice_request

# Tables that hold no single outlet's data, each with why.
GLOBAL_TABLES = {
    # The registry of merchants: the key other rows carry, owned by no outlet (a reference table
    # on Citus, copied to every node).
    "merchants",
    # The registry of outlets: its `id` is the outlet key itself, and it carries `merchant_nif`
    # (a reference table: every outlet-scoped request reads it).
    "outlets",
    # A merchant's dashboard tokens: scoped to the merchant (all its outlets), not to one outlet.
    "merchant_tokens",
    # Operators' and merchants' dashboard sessions: a person's login, across outlets.
    "dashboard_sessions",
    # The record of an archived month of the whole ledger (PostgreSQL), across outlets; its
    # per-outlet part, ledger_archived_ranges, carries the keys.
    "ledger_archives",
    # The schema's own history.
    "schema_migrations",
    # SQLite's bookkeeping of AUTOINCREMENT counters.
    "sqlite_sequence",
}


# Outlet tables this workload cannot fill, each with the test that checks their rows' keys.
ELSEWHERE = {
    # Written only by archiving a past month (PostgreSQL): tests/pg/test_ledger_partitions.py,
    # test_an_archived_month_leaves_the_rest_verifiable.
    "ledger_archived_ranges",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    """Both backends in every run (this overrides conftest's, which follows STALELA_TEST_CLOUD_DB)."""
    if request.param == "sqlite":
        yield None
        return
    from tests.pg.server import scratch_schema

    with scratch_schema(request.getfixturevalue("pg_database")) as url:
        yield url


def tables(tx, postgresql: bool) -> dict[str, dict]:
    """{table: {"columns": {name: not null}, "partition": bool}} of the database's schema."""
    found: dict[str, dict] = {}
    if postgresql:
        for row in tx._all("SELECT c.relname AS t, c.relispartition AS part, a.attname AS col, a.attnotnull AS nn "
                           "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
                           "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') "
                           "AND a.attnum > 0 AND NOT a.attisdropped"):
            table = found.setdefault(row["t"], {"columns": {}, "partition": row["part"]})
            table["columns"][row["col"]] = row["nn"]
        return found
    for row in tx._all("SELECT name FROM sqlite_master WHERE type = 'table'"):
        found[row["name"]] = {"partition": False, "columns": {
            c["name"]: bool(c["notnull"]) for c in tx._all(f"PRAGMA table_info({row['name']})")}}
    return found


def key_problems(tx, postgresql: bool) -> list[str]:
    """What breaks the rule: a table of outlet data without both keys NOT NULL, or with a row
    whose merchant is not its outlet's."""
    problems = []
    for name, table in sorted(tables(tx, postgresql).items()):
        if name in GLOBAL_TABLES:
            continue
        for key in ("outlet_id", "merchant_nif"):
            if key not in table["columns"]:
                problems.append(f"{name} has no {key}")
            elif not table["columns"][key]:
                problems.append(f"{name}.{key} may be NULL")
        if problems:
            continue
        wrong = tx._one(f"SELECT COUNT(*) AS n FROM {name} t LEFT JOIN outlets o ON o.id = t.outlet_id "
                        "WHERE o.id IS NULL OR t.merchant_nif IS NULL OR t.merchant_nif <> o.merchant_nif")["n"]
        if wrong:
            problems.append(f"{name}: {wrong} row(s) without their outlet's merchant")
    return problems


async def workload(cloud) -> None:
    """Something in every table of outlet data, through the service's own paths."""
    for outlet, nif in (("KIN-01", "A1234567B"), ("KIN-02", "B7654321C")):
        await cloud.outlet(outlet, nif)
    agent = await cloud.enroll("KIN-01")
    other = await cloud.enroll("KIN-02")
    await cloud.token("KIN-02")  # an enrollment token left unused
    await cloud.post("/v1/seal", {"invoice": invoice_request(request_id="R-1").model_dump(mode="json")},
                     agent.headers, 201)
    cred = await cloud.credential(agent, block_size=5)
    invoices = [agent.seal(cred, cred.block_start), agent.seal(cred, cred.block_start + 2)]  # a gap
    bad = other.seal(await cloud.credential(other, block_size=5), 1, key=agent.key)  # not its key: rejected
    assert [r["status"] for r in (await cloud.reconcile(agent, invoices))["results"]] == ["accepted"] * 2
    assert [r["status"] for r in (await cloud.reconcile(other, [bad]))["results"]] == ["rejected"]
    await cloud.post("/v1/admin/outlets/KIN-01/devices", {"mid": "MID-0001", "nif": "A1234567B"}, cloud.admin, 201)
    await cloud.post("/v1/admin/outlets/KIN-02/provisioning-tokens", {"ttl": "2h"}, cloud.admin, 201)
    cloud.clock.advance(days=2)  # the credential expires with its gap: flagged by the audit
    cloud.service.audit()
    store, now = cloud.service.store, cloud.clock.now
    forwarding.add_queues(store, now)
    with store.write() as tx:
        tx.lock_outlet("KIN-01")
        entry = tx.ledger_entries_from("KIN-01", 1, 1)[0]
        tx.dgi_put_submission(outlet_id="KIN-01", seq=1, ledger_id=entry["id"], invoice_id="I-1", rn="I-1",
                              state="normalized", uid="u1", now=forwarding.ts(now))
        tx.dgi_add_event(outlet_id="KIN-01", seq=1, ledger_id=entry["id"], invoice_id="I-1", kind="normalized",
                         uid="u1", now=forwarding.ts(now + timedelta(seconds=1)), once=True)


async def test_every_table_of_outlet_data_carries_its_outlet_and_merchant(cloud):
    await workload(cloud)
    store = cloud.service.store
    postgresql = not isinstance(store, Store)
    with store.read() as tx:
        assert key_problems(tx, postgresql) == []
        found = tables(tx, postgresql)
        outlet_tables = {name for name, t in found.items() if name not in GLOBAL_TABLES and not t["partition"]}
        # The workload reached every one of them (else a table's INSERT would go unchecked).
        empty = [name for name in sorted(outlet_tables - ELSEWHERE)
                 if tx._one(f"SELECT COUNT(*) AS n FROM {name}")["n"] == 0]
        assert empty == [], outlet_tables
        # Both outlets' rows, each with its own merchant.
        assert {(r["outlet_id"], r["merchant_nif"]) for r in tx._all("SELECT outlet_id, merchant_nif FROM agents")} \
            == {("KIN-01", "A1234567B"), ("KIN-02", "B7654321C")}
    assert "ledger_keys" in outlet_tables if postgresql else "ledger_keys" not in found


async def test_a_table_without_the_keys_is_caught(cloud):
    await cloud.outlet()
    store = cloud.service.store
    postgresql = not isinstance(store, Store)
    with store.write() as tx:
        tx._run("CREATE TABLE widgets (outlet_id TEXT NOT NULL, name TEXT)")
        tx._run("CREATE TABLE gadgets (outlet_id TEXT NOT NULL, merchant_nif TEXT NOT NULL)")
        tx._run("INSERT INTO gadgets (outlet_id, merchant_nif) VALUES ('KIN-01', 'SOMEONE-ELSE')")
        assert key_problems(tx, postgresql) == ["gadgets: 1 row(s) without their outlet's merchant",
                                                "widgets has no merchant_nif"]


async def test_an_insert_without_the_merchant_is_refused(cloud):
    """The database itself refuses a row of outlet data without its merchant (SQLite: the
    column's default '' is refused by a trigger; PostgreSQL: NOT NULL without a default)."""
    await cloud.outlet()
    with pytest.raises(Exception, match="merchant_nif"):
        with cloud.service.store.write() as tx:
            tx._run("INSERT INTO flags (outlet_id, reason, numbers, detail, created_at) "
                    "VALUES ('KIN-01', 'gap', '[]', 'x', 'now')")
