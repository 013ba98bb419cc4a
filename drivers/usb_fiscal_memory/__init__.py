"""Driver for the DGI fiscal device (MCF), protocol "MCF-SFE" v1.0. See docs/mcf-protocol.md.

Layers, bottom up: framing (pure) -> transport (byte pipes) -> protocol (Link) -> commands
(typed requests/answers) -> client (MCFClient). Transports are imported on demand so that
pure users (the simulator's framing) do not pull in pyserial or pyusb.
"""
from .client import InvoiceDraft, MCFClient, Payment, SubtotalMismatch, Totals
from .commands import NormalizedInvoice
from .errors import DeviceError, MCFLinkError
from .protocol import Link
from .transport import Transport, open_transport, register_scheme

__all__ = [
    "DeviceError",
    "InvoiceDraft",
    "Link",
    "MCFClient",
    "MCFLinkError",
    "NormalizedInvoice",
    "Payment",
    "SubtotalMismatch",
    "Totals",
    "Transport",
    "open_transport",
    "register_scheme",
]
