"""A small e-MCF client written only from /work/shared/spec/emcf.md (the DGI's API as public
clients use it), the way an existing integration talks to the DGI's service. It imports nothing
of the agent: pointed at the agent's base URL, it must simply work.

Its habits are those the spec records of real clients: errors are found by the `errorCode` key
whatever the HTTP status; phase 1's totals are compared with the client's own and the request
cancelled when they differ; the uid is kept before the confirm; a confirm whose answer was lost
is sent again.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class EmcfRefused(Exception):
    def __init__(self, code: Any, desc: str, status: int) -> None:
        super().__init__(f"{code}: {desc}")
        self.code, self.desc, self.status = code, desc, status


class EmcfClient:
    def __init__(self, base_url: str, token: str, *, bearer: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.bearer = bearer
        self.stored_uids: list[str] = []  # what a client keeps before confirming

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}" if self.bearer else self.token)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        answer = json.loads(payload) if payload else None
        # Clients look for the keys and ignore the status.
        if isinstance(answer, dict) and "errorCode" in answer:
            raise EmcfRefused(answer["errorCode"], answer.get("errorDesc", ""), status)
        return answer

    # ---------------------------------------------------------------- information
    def status(self) -> dict:
        return self._call("GET", "/api/info/status")

    def tax_groups(self) -> dict:
        return self._call("GET", "/api/info/taxGroups")

    def info(self, name: str) -> list:
        return self._call("GET", f"/api/info/{name}")

    def pending(self) -> dict:
        return self._call("GET", "/api/invoice")

    # ---------------------------------------------------------------- billing
    def submit(self, invoice: dict) -> dict:
        """Phase 1: the totals computed by the service (nothing normalized yet)."""
        return self._call("POST", "/api/invoice", invoice)

    def confirm(self, uid: str, total: float, vtotal: float) -> dict:
        return self._call("PUT", f"/api/invoice/{uid}/confirm", {"total": total, "vtotal": vtotal})

    def cancel(self, uid: str) -> Any:
        return self._call("PUT", f"/api/invoice/{uid}/cancel")

    def normalize(self, invoice: dict, expected_total: float, expected_vat: float) -> dict:
        """The whole flow as integrations run it: submit, compare, keep the uid, confirm."""
        answer = self.submit(invoice)
        uid = answer["uid"]
        if round(answer["total"] - expected_total, 2) != 0 or round(answer["vtotal"] - expected_vat, 2) != 0:
            self.cancel(uid)
            raise EmcfRefused("client", f"totals differ: {answer['total']}/{answer['vtotal']}", 200)
        self.stored_uids.append(uid)
        return self.confirm(uid, answer["total"], answer["vtotal"])


def receipt_code(code_def_dgi: str) -> str:
    """The code as receipts print it: groups of 4."""
    return "-".join(code_def_dgi[i:i + 4] for i in range(0, len(code_def_dgi), 4))


def invoice(rn: str, *, nif: str, items: list[dict] | None = None, type_: str = "FV", **extra: Any) -> dict:
    """A body as the ERPNext app's mapper builds it (the spec's example, the DGI's sample sale)."""
    body = {
        "nif": nif, "rn": rn, "mode": "ttc", "isf": None, "type": type_,
        "items": items if items is not None else [
            {"code": "EAU-50CL", "name": "EAU", "type": "BIE", "price": 720.0, "quantity": 5.0, "taxGroup": "A",
             "originalPrice": None, "priceModification": None, "taxSpecificValue": None, "taxSpecificAmount": None},
            {"code": "LAIT", "name": "LAIT GR", "type": "BIE", "price": 464.0, "quantity": 1.0, "taxGroup": "B",
             "originalPrice": None, "priceModification": None, "taxSpecificValue": None, "taxSpecificAmount": None},
        ],
        "operator": {"id": None, "name": "Administrator"},
        "client": {"nif": None, "name": "ABC SARL", "contact": None, "address": None, "type": "PM"},
        "payment": [{"name": "ESPECES", "amount": 4064.0}],
        "reference": None, "referenceType": None, "referenceDesc": None,
        "curCode": None, "curRate": None, "curDate": None,
    }
    body.update(extra)
    return body
