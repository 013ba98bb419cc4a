"""The examples the docs give a new user are valid: the complete request of docs/api.md passes
the contract and comes to the totals the page shows."""
from __future__ import annotations

import json
import re
from datetime import date

from fiscal.models import InvoiceRequest
from fiscal.tax import compute
from tests.support import ROOT


def test_the_complete_request_of_the_api_docs_is_valid_and_adds_up_as_shown():
    page = (ROOT / "docs" / "api.md").read_text()
    body = re.search(r"-d '(\{.*?\})'\n```", page, re.S).group(1)
    request = InvoiceRequest.model_validate(json.loads(body))
    totals = compute(request, date(2026, 12, 4)).totals_json
    shown = re.search(r'"totals": \{"total": "([0-9.]+)", "vat": "([0-9.]+)"', page)
    assert (totals["total"], totals["vat"]) == shown.groups() == ("4064.00", "64.00")
    assert totals["change"] == "936.00"


def test_the_licence_file_matches_the_package_metadata():
    declared = re.search(r'^license = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert declared in (ROOT / "LICENSE").read_text()
