"""A cloud data folder with something to show: two merchants, a few outlets with a fortnight of
sales sealed by real agents (delegated credentials, real signatures, through reconciliation),
a gap flag, a rejected invoice, an MCF, a backing-off DGI queue and a quarantined entry.

Made in-process through the cloud's own service before `stalela cloud serve` opens the folder;
used by tests/browser/test_dashboard_browser.py and by `python -m tests.browser.shoot`.
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cloud_stub import forwarding
from cloud_stub.config import CloudConfig
from cloud_stub.service import CloudService
from fiscal.signing import generate_private_key, public_key_text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cloud"))
from cloud_helpers import Agent, Clock, invoice_request  # noqa: E402

OURS, THEIRS = "A1234567B", "B7654321C"


@dataclass
class Demo:
    gap_outlet: str
    quarantined_outlet: str
    quarantined_seq: int
    merchant_token: str  # OURS's read-only token
    theirs: str  # an outlet of THEIRS


def _agent(service: CloudService, outlet_id: str) -> tuple[Agent, dict]:
    token = service.create_token(outlet_id)["token"]
    key = generate_private_key()
    enrolled = service.enroll(token, public_key_text(key), "till")
    row = service.authenticate(enrolled["agent_token"])
    return Agent(id=enrolled["agent_id"], token=enrolled["agent_token"], outlet=enrolled["outlet"], key=key), row


def _day_of_sales(service: CloudService, clock: Clock, agent: Agent, row: dict, count: int, rng: random.Random,
                  skip: int | None = None) -> None:
    """One credential per day, used up: `count` sales spread over the day, reconciled in the evening;
    `skip` leaves that sale's number out (a gap: a later number arrives first)."""
    from fiscal.credential import DelegatedCredential

    cred = DelegatedCredential.model_validate(service.issue_credential(row, block_size=count)[0])
    invoices = []
    for k in range(count):
        when = clock.now + timedelta(minutes=20 * k)
        request = invoice_request(price=f"{rng.randint(5, 400) * 100}.00", group=rng.choice("AB"))
        invoice = agent.seal(cred, cred.block_start + k, when=when, request=request, advance_chain=k != skip)
        if k != skip:
            invoices.append(invoice)
    clock.now += timedelta(minutes=20 * count + rng.randint(1, 90))  # the day's upload: a few minutes' lag
    service.reconcile(row, invoices)


def populate(data_dir: Path, days: int = 14, outlets: int = 6) -> Demo:
    rng = random.Random(13)
    # The last day ends a little before now: every moment shown is in the past.
    clock = Clock(datetime.now(timezone.utc) - timedelta(days=days - 1, hours=9))
    service = CloudService(CloudConfig(data_dir=data_dir, audit_interval=0, verify_workers=0, clock=clock,
                                       gap_grace=timedelta(hours=1)))
    try:
        service.add_merchant(OURS, "ABC SARL")
        service.add_merchant(THEIRS, "XYZ SPRL")
        names = ["Gombe", "Limete", "Ngaliema", "Kintambo", "Lemba", "Matete", "Bandal", "Masina"]
        ids = [f"KIN-{n:02d}" for n in range(1, outlets + 1)]
        for outlet_id, name in zip(ids, names):
            service.add_outlet(outlet_id, OURS, f"Supermarché {name}")
        service.add_outlet("LUB-01", THEIRS, "Lubumbashi centre", "Africa/Lubumbashi")
        service.bind_device("KIN-01", "MCF-0001", OURS, firmware={"version": "1.4.2"})
        agents = {o: _agent(service, o) for o in ids[:4] + ["LUB-01"]}
        start = clock.now
        for day in range(days):
            for n, (outlet_id, (agent, row)) in enumerate(agents.items()):
                clock.now = start + timedelta(days=day, minutes=37 * n)
                last_day = day == days - 1
                _day_of_sales(service, clock, agent, row, rng.randint(6, 14) + day % 5, rng,
                              skip=3 if outlet_id == "KIN-02" and last_day else None)
        clock.now += timedelta(minutes=5)
        service.audit()
        # A tampered upload: rejected (and listed with its reason).
        agent, row = agents["KIN-01"]
        from fiscal.credential import DelegatedCredential

        cred = DelegatedCredential.model_validate(service.issue_credential(row, block_size=5)[0])
        bad = agent.seal(cred, cred.block_start, when=clock.now, advance_chain=False)
        bad["totals"]["total"] = "1.00"
        service.reconcile(row, [bad])
        # DGI forwarding: KIN-03's first entry refused by the DGI, KIN-04 backing off after a 503.
        now = clock.now
        forwarding.add_queues(service.store, now)
        lease = timedelta(seconds=30)
        assert forwarding.claim(service.store, "demo", ["KIN-03"], now, lease, 1) == ["KIN-03"]
        work = forwarding.next_work(service.store, "KIN-03")
        forwarding.record_quarantine(service.store, work, "demo", "E-4012",
                                     "the client's NIF is not registered", now)
        forwarding.drop(service.store, "KIN-03", "demo", now)
        assert forwarding.claim(service.store, "demo", ["KIN-04"], now, lease, 1) == ["KIN-04"]
        forwarding.back_off(service.store, "KIN-04", "demo", 3600, "the DGI answered 503 Service Unavailable", now)
        forwarding.drop(service.store, "KIN-04", "demo", now)
        token = service.create_merchant_token(OURS, timedelta(days=30))["token"]
        return Demo(gap_outlet="KIN-02", quarantined_outlet="KIN-03", quarantined_seq=work.seq,
                    merchant_token=token, theirs="LUB-01")
    finally:
        service.close()
