"""The protocol constants of the fiscal regime and of our seals, in one place.

Every tag here is part of a signed or printed text: changing one changes what verifies.
"""
from __future__ import annotations

# The DGI's QR prefix for device-normalized invoices: `RDCDEF01;{MID};{SIG};{NIF};{DT}`
# (Protocoles SFE-MCF v1.0, chapter 2). The MCF builds that text; we only store and print it.
DEVICE_QR_TAG = "RDCDEF01"
# Our QR prefix for Stalela-sealed invoices (`cloud`, `delegated`), see fiscal/seal.py.
STALELA_QR_TAG = "RDCSTL01"
# The texts the cloud's issuer signs: a delegated credential, and an agent's closure of its block.
CREDENTIAL_TAG = "STLCRED1"
CLOSURE_TAG = "STLCLOSE1"
# The previous hash of the first invoice of every chain.
GENESIS_HASH = "0" * 64
# The signers, as they appear in an invoice's `mode`.
MODES = ("device", "cloud", "delegated")


def chain_key(mode: str, *, outlet_id: str, authority_id: str | None = None) -> str:
    """The name of one hash chain: one per device, by its MID (`device:SIM0000001-1`), and one
    per outlet for each of the two Stalela signers (`cloud:KIN-01`, `delegated:KIN-01`): the
    delegated chain runs on from one credential to the next."""
    if mode == "device":
        if not authority_id:
            raise ValueError("a device chain is named by the device's MID")
        return f"device:{authority_id}"
    if mode in MODES:
        return f"{mode}:{outlet_id}"
    raise ValueError(f"no chain for mode {mode!r}")


def device_qr(mid: str, sig: str, nif: str, dt: str) -> str:
    """The QR text of a device-normalized invoice, exactly as the DGI defines it."""
    return f"{DEVICE_QR_TAG};{mid};{sig};{nif};{dt}"
