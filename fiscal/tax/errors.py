"""The one error type of the tax engine: a list of field-level problems the API turns into a 422."""
from __future__ import annotations


class TaxError(ValueError):
    """An invoice the tax rules refuse. `errors` is a list of `{"field": ..., "message": ...}`."""

    def __init__(self, errors: list[dict[str, str]]):
        if not errors:
            raise ValueError("TaxError needs at least one error")
        self.errors = [{"field": e["field"], "message": e["message"]} for e in errors]
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in self.errors))

    @classmethod
    def one(cls, field: str, message: str) -> "TaxError":
        return cls([{"field": field, "message": message}])

    @property
    def fields(self) -> list[str]:
        return [e["field"] for e in self.errors]


class TaxTableError(ValueError):
    """The tax table data itself is invalid (a configuration error, not a bad invoice)."""
