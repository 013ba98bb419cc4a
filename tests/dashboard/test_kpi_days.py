"""`kpi_days`, the daily figures kept as the ledger grows (cloud_stub/kpis.py), always equal what
the ledger itself gives (`repository.kpi_days_from_ledger`, with which migration 4 fills the
table for a ledger that existed before it)."""
from __future__ import annotations

from cloud_stub.repository import SQLITE_LAG, SQLITE_TOTAL, Store, kpi_days_from_ledger
from cloud_helpers import invoice_request
from dash_support import gap_outlet

COLUMNS = "outlet_id, day, invoices, net_sales, lag_sum, lag_max"


class _Rollback(Exception):
    pass


def _rows(tx) -> list[tuple]:
    return [(r["outlet_id"], r["day"], r["invoices"], round(r["net_sales"], 2), round(r["lag_sum"], 3),
             round(r["lag_max"], 3)) for r in tx._all(f"SELECT {COLUMNS} FROM kpi_days ORDER BY outlet_id, day")]


def _from_scratch(store) -> list[tuple]:
    """The table rebuilt from the ledger, in a transaction rolled back."""
    from cloud_stub import repository_pg

    rebuild = kpi_days_from_ledger(*((repository_pg.PG_TOTAL, repository_pg.PG_LAG)
                                     if isinstance(store, repository_pg.PgStore) else (SQLITE_TOTAL, SQLITE_LAG)))
    try:
        with store.write() as tx:
            tx._run("DELETE FROM kpi_days")
            tx._run(rebuild)
            rebuilt = _rows(tx)
            raise _Rollback
    except _Rollback:
        return rebuilt


async def test_the_daily_figures_follow_the_ledger_through_every_way_in(cloud):
    agent, cred = await gap_outlet(cloud)  # two delegated entries, reconciled
    cloud.clock.advance(seconds=90)
    sale = await cloud.post("/v1/seal", {"invoice": invoice_request(price="2000.00").model_dump(mode="json")},
                            agent.headers, 201)  # sealed online by the cloud
    credit = invoice_request(price="500.00", type_="FA", reference=sale["security"]["code"])
    await cloud.post("/v1/seal", {"invoice": credit.model_dump(mode="json")}, agent.headers, 201)
    late = agent.seal(cred, cred.block_start + 3, when=cloud.clock.now.replace(microsecond=0))
    cloud.clock.advance(minutes=7)  # uploaded seven minutes after it was sealed
    assert (await cloud.reconcile(agent, [late]))["accepted"] == 1
    store = cloud.service.store
    with store.read() as tx:
        kept = _rows(tx)
    assert kept == _from_scratch(store)
    assert sum(r[2] for r in kept) == 5
    expected = sum(float(e["invoice"]["totals"]["total"]) * (-1 if e["type"] == "FA" else 1)
                   for e in await cloud.ledger("KIN-01"))
    assert round(sum(r[3] for r in kept), 2) == round(expected, 2)
    assert max(r[5] for r in kept) >= 7 * 60


def test_migration_4_fills_the_figures_of_an_existing_ledger(tmp_path, database_url):
    rows = [  # outlet, seq, recorded_at, type, sealed_at, total, state
        ("KIN-01", 1, "2026-03-01T10:00:30+00:00", "FV", "2026-03-01T10:00:00+00:00", "100.00", "verified"),
        ("KIN-01", 2, "2026-03-02T09:00:00+00:00", "FV", "2026-03-01T23:00:00+00:00", "250.50", "verified"),
        ("KIN-01", 3, "2026-03-02T09:00:00+00:00", "FA", "2026-03-02T08:59:00+00:00", "50.25", None),
        ("KIN-01", 4, "2026-03-02T09:00:00+00:00", "FV", "2026-03-02T08:00:00+00:00", "999.00", "unregistered_device"),
    ]
    if database_url:
        from cloud_stub.repository_pg import PgStore as open_at
        target = database_url
    else:
        open_at, target = Store, tmp_path / "cloud.sqlite3"
    old = open_at(target, upto=3)
    with old.write() as tx:
        tx._run("INSERT INTO merchants (nif, name, taxpayer, created_at) VALUES ('A1', 'A', '{}', 'x')")
        tx._run("INSERT INTO outlets (id, merchant_nif, name, time_zone, created_at) "
                "VALUES ('KIN-01', 'A1', 'K', 'Africa/Kinshasa', 'x')")
        for outlet, seq, recorded, kind, sealed, total, state in rows:
            tx._run("INSERT INTO ledger (outlet_id, seq, recorded_at, mode, inv_type, authority_id, fiscal_number, "
                    "number_key, chain_key, sealed_at, invoice_hash, prev_ledger_hash, ledger_hash, invoice, state) "
                    "VALUES (?, ?, ?, 'delegated', ?, 'DC-1', ?, ?, 'delegated:KIN-01', ?, 'h', 'p', 'l', ?, ?)",
                    outlet, seq, recorded, kind, seq, f"k{seq}", sealed, f'{{"totals": {{"total": "{total}"}}}}', state)
    old.close()
    store = open_at(target)
    try:
        with store.read() as tx:
            assert _rows(tx) == [("KIN-01", "2026-03-01", 2, 350.5, 30 + 10 * 3600, 10 * 3600),
                                 ("KIN-01", "2026-03-02", 1, -50.25, 60, 60)]
    finally:
        store.close()
