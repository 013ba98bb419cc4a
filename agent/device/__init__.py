"""Device mode: the MCF (DGI fiscal device) as the agent's signer. See docs/mcf-protocol.md."""
from .signer import DeviceOutcomeUnknown, DeviceSigner, InvoiceNumberReused

__all__ = ["DeviceOutcomeUnknown", "DeviceSigner", "InvoiceNumberReused"]
