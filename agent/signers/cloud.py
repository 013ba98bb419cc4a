"""The `cloud` signer: the cloud ledger seals online with its own counter and chain.

Exactly-once across a lost answer: the request is recorded in `cloud_intents` before it is sent.
If the answer never comes (timeout, reset) the cloud may or may not have sealed it, so that
request_id stays reserved for the cloud — which is idempotent by request_id — and no other signer
may seal it; the POS gets a 503 and retries the same request_id. A connection that could not even
be opened means nothing was sent: the next signer of the policy is tried at once.

Each request carries a deadline (now + timeout) after which the cloud never commits it, checked
last inside its sealing transaction. The agent waits `clock_margin` past the deadline (the two
clocks may differ that much) for the answer. Then:

* an answer `deadline_passed`: nothing was sealed, for certain; the next signer seals the sale;
* no answer at all (the cloud vanished or froze mid-request): the cloud can no longer seal this
  attempt, so the intent is marked `superseded` and the next signer seals the sale at once — the
  cashier is never left with a stuck sale. Once the cloud answers again, `settle`
  tells it which invoice replaced the attempt: had the cloud sealed it before the deadline and
  lost the answer (it froze between its commit and its answer), the sale would hold two numbers,
  and the cloud flags the outlet `double_seal` for audit, naming both.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import aiohttp

from fiscal.seal import verify_stalela_seal

from ..cloud_client import CloudClient
from ..errors import AgentError, IdempotencyConflict
from ..journal import Journal, SealJob, SealOutcome
from ..store import repository
from .base import SignerUnavailable


log = logging.getLogger("stalela.agent")


class CloudOutcomeUnknown(AgentError):
    status = 503
    type = "/problems/cloud-outcome-unknown"
    title = "The cloud signer's answer was lost"


class CloudSigner:
    name = "cloud"
    answers_retries = False
    keeps_drafts = False
    online = True

    def __init__(self, journal: Journal, base_url: str, token: str, issuer_public_key: str, *,
                 isf: str, timeout: float = 1.0, clock_margin: float = 1.0) -> None:
        self.journal = journal
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.issuer_public_key = issuer_public_key
        self.isf = isf
        self.timeout = timeout
        self.clock_margin = clock_margin
        self.client = CloudClient(base_url, token=token, timeout=timeout)
        self.last_ok: str | None = None
        self.last_error: str | None = None

    async def close(self) -> None:
        await self.client.close()

    def health(self) -> dict[str, Any]:
        return {"available": self.last_error is None, "last_ok": self.last_ok, "last_error": self.last_error}

    def state(self) -> str:
        return "available" if self.last_error is None else "unavailable"

    async def probe(self) -> bool:
        """Used by the breaker's background probe: is the cloud answering?"""
        try:
            status, _, _ = await self.client.exchange("GET", "/v1/health", timeout=self.timeout, parse=False)
            ok = status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        self.last_error = None if ok else "cloud not answering"
        return ok

    def _intent(self, request_id: str, invoice_id: str, deadline: str):
        sent_at = datetime.now(timezone.utc).isoformat()
        return lambda conn: repository.record_cloud_intent(conn, request_id, invoice_id, deadline, sent_at)

    async def seal(self, job: SealJob) -> SealOutcome:
        rid = job.request["request_id"]
        deadline = datetime.now(timezone.utc) + timedelta(seconds=self.timeout)
        stamp = deadline.isoformat(timespec="milliseconds")
        invoice_id = await asyncio.wrap_future(self.journal.run_in_writer(self._intent(rid, str(uuid.uuid4()), stamp)))
        body = {"invoice": job.request, "isf": self.isf, "id": invoice_id, "deadline": stamp}
        try:
            status, data, _ = await self.client.exchange("POST", "/v1/seal", json_body=body,
                                                         timeout=self.timeout + self.clock_margin)
        except aiohttp.ClientConnectorError as exc:
            # Nothing was sent: safe to let another signer seal this sale.
            await self._forget(rid)
            self.last_error = f"cloud unreachable ({exc.__class__.__name__})"
            raise SignerUnavailable("cloud", self.last_error) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Sent, and no answer by the deadline and the margin (or the link broke): past the
            # deadline the cloud no longer commits this attempt, so another signer may seal the sale.
            await self._after_deadline(deadline)
            await self._supersede(rid)
            self.last_error = f"no answer from the cloud before the deadline ({exc.__class__.__name__})"
            raise SignerUnavailable("cloud", self.last_error) from None
        if status in (200, 201) and isinstance(data, dict):
            problems = verify_stalela_seal(data, self.issuer_public_key)
            if problems:
                raise CloudOutcomeUnknown("the cloud's seal does not verify: " + "; ".join(problems))
            self.last_ok, self.last_error = datetime.now(timezone.utc).isoformat(), None
            return await asyncio.wrap_future(
                self.journal.run_in_writer(lambda conn: self.journal.record_cloud_seal(conn, job, data)))
        detail = data.get("detail") if isinstance(data, dict) else None
        if status == 422 and isinstance(data, dict) and str(data.get("type", "")).endswith("/deadline_passed"):
            # The cloud was too slow, and said so: nothing was sealed and this attempt never will
            # be. The link is poor: spare the next sales the wait.
            await self._forget(rid)
            self.last_error = "the cloud answered after the deadline"
            raise SignerUnavailable("cloud", self.last_error)
        if status == 409:
            # The request_id was sealed before with another body: that is the POS's answer, not a
            # failure of the cloud (its breaker stays closed, and no other signer may seal it).
            await self._forget(rid)
            raise IdempotencyConflict(detail or f"request_id {rid!r} was already used for a different invoice")
        if 400 <= status < 500 and status not in (408, 429):
            # The cloud refused this invoice: it did not seal it. Only a refusal of the agent itself
            # (its token) says the link is unusable; a refused invoice leaves the breaker closed.
            await self._forget(rid)
            raise SignerUnavailable("cloud", f"cloud refused the invoice ({status}: {detail})",
                                    link_failed=status in (401, 403))
        self.last_error = f"cloud error {status}"
        raise CloudOutcomeUnknown(f"the cloud answered {status}; retry the same request_id",
                                  reason="cloud_outcome_unknown")

    async def _after_deadline(self, deadline: datetime) -> None:
        """Wait, if need be, until the deadline has passed by the clock margin."""
        left = (deadline - datetime.now(timezone.utc)).total_seconds() + self.clock_margin
        if left > 0:
            await asyncio.sleep(left)

    async def _supersede(self, request_id: str) -> None:
        await asyncio.wrap_future(self.journal.run_in_writer(
            lambda conn: repository.supersede_cloud_intent(conn, request_id)))

    async def settle(self) -> int:
        """Tell the cloud, once it answers again, which invoice replaced each attempt it never
        answered (POST /v1/seal-requests/{id}/superseded); the intent is then done with. Returns
        how many were settled. A cloud that had sealed one flags the outlet `double_seal`."""
        rows = repository.superseded_cloud_intents(self.journal.reader)
        settled = 0
        for row in rows:
            status, data, _ = await self.client.exchange(
                "POST", f"/v1/seal-requests/{quote(row['request_id'], safe='')}/superseded",
                json_body={"authority_id": row["authority_id"], "fiscal_number": row["fiscal_number"]},
                timeout=self.timeout)
            if status != 200 or not isinstance(data, dict):
                break  # the cloud is not answering properly yet: next time
            if data.get("sealed"):
                log.error("the cloud had sealed a request the agent then sealed itself",
                          extra={"event": "signer.double_seal", "request_id": row["request_id"],
                                 "cloud_fiscal_number": data.get("fiscal_number"),
                                 "authority_id": row["authority_id"], "fiscal_number": row["fiscal_number"]})
            await self._forget(row["request_id"])
            settled += 1
        return settled

    async def _forget(self, request_id: str) -> None:
        await asyncio.wrap_future(self.journal.run_in_writer(
            lambda conn: repository.settle_intent(conn, "cloud_intents", request_id)))
