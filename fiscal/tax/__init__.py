"""Tax engine: the effective-dated FACNO tax table and the invoice computation (docs/tax-rules.md)."""
from .engine import TaxResult, compute, credit_note_limit_check, group_total, line_amounts, vat_in_ttc, vat_on_ht
from .errors import TaxError, TaxTableError
from .payments import mcf_balances, settle
from .rules import EXPORT_TYPES
from .table import GroupRule, Period, TaxTable

__all__ = [
    "EXPORT_TYPES", "GroupRule", "Period", "TaxError", "TaxResult", "TaxTable", "TaxTableError",
    "compute", "credit_note_limit_check", "group_total", "line_amounts", "mcf_balances", "settle",
    "vat_in_ttc", "vat_on_ht",
]
