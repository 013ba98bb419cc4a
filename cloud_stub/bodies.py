"""Request bodies of the cloud API. Strict: unknown fields and wrong types are refused."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt

from agent.fiscal.credential import BlockClosure
from agent.fiscal.models import InvoiceRequest

Name = Annotated[str, Field(min_length=1, max_length=128)]
Short = Annotated[str, Field(min_length=1, max_length=64)]
RequestId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7E]+$")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnrollBody(Body):
    token: Annotated[str, Field(min_length=1, max_length=256)]
    agent_public_key: Annotated[str, Field(min_length=1, max_length=128)]
    label: Short = "agent"


class CredentialBody(Body):
    closure: BlockClosure | None = None
    block_size: StrictInt | None = None
    request_id: RequestId | None = None


class SealBody(Body):
    invoice: InvoiceRequest
    isf: Short | None = None
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] | None = None


class ReconcileBody(Body):
    invoices: Annotated[list[Any], Field(min_length=1)]


class DeviceBody(Body):
    mid: Annotated[str, Field(min_length=1, max_length=32)]
    nif: Annotated[str, Field(min_length=1, max_length=32)]
    status: Literal["active", "suspended", "retired"] = "active"
    firmware: dict[Short, Short] = {}
    outlet_id: Short | None = None  # admin only; an agent provisions for its own outlet


class Taxpayer(Body):
    address: Name | None = None
    rccm: Short | None = None
    phone: Short | None = None
    email: Name | None = None
    activity: Name | None = None
    regime: Short | None = None


class MerchantBody(Body):
    nif: Annotated[str, Field(min_length=1, max_length=32)]
    name: Name
    taxpayer: Taxpayer = Taxpayer()


class OutletBody(Body):
    id: Annotated[str, Field(min_length=1, max_length=40)]
    merchant_nif: Annotated[str, Field(min_length=1, max_length=32)]
    name: Name
    time_zone: Literal["Africa/Kinshasa", "Africa/Lubumbashi"] = "Africa/Kinshasa"
    isf: Short | None = None


class TokenBody(Body):
    ttl: Annotated[str, Field(pattern=r"^\d{1,6}[smhd]$")] | None = None


class RevokeBody(Body):
    reason: Name = "revoked by an operator"
    effective_at: AwareDatetime | None = None
