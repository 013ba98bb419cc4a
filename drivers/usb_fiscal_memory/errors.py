"""Errors of the MCF driver.

Two families, deliberately kept apart (see style.md):

* link faults -- the bytes did not make it, or came back unreadable -- are exceptions under
  ``MCFLinkError``; retrying or reconnecting may help;
* errors the device *reports* (``E:...`` answers) are ``DeviceError`` values carrying the
  command code, the device's text and the status bytes; retrying the same command will not help.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - import only for type checkers
    from .framing import Status


class MCFLinkError(Exception):
    """Base of every link / transport fault (never raised for a device-reported error)."""


class FramingError(MCFLinkError):
    """A frame is malformed: bad markers, LEN, BCC, size or field encoding."""


class ResponseParseError(MCFLinkError):
    """The device answered a well-framed message whose DATA this driver cannot read."""


class LinkTimeout(MCFLinkError):
    """Nothing usable arrived within the wait."""


class DeviceNotFound(MCFLinkError):
    """The port or USB device does not exist."""


class PortBusy(MCFLinkError):
    """Another process holds the port (we open serial ports exclusively)."""


class PermissionDenied(MCFLinkError):
    """The OS refused access to the device node."""

    FIX = "add the udev rule systemd/60-stalela-mcf.rules and join group dialout"

    def __init__(self, message: str) -> None:
        super().__init__(f"{message} ({self.FIX})")


class LinkClosed(MCFLinkError):
    """The link was closed or the device unplugged while in use."""


class TooManyRetries(MCFLinkError):
    """Every attempt (NAK, silence, bad BCC) was used up without a valid answer."""


class DeviceError(Exception):
    """An error the MCF reported (``E:{ER}``), as a value; raise it only where a flow must stop.

    ``cmd`` is the command code it answered, ``text`` the device's own description (manufacturer
    specific, e.g. ``LE MONTANT N'EST PAS VALIDE``), ``status`` the STA bytes of that answer.
    """

    def __init__(self, cmd: int, text: str, status: "Status | None" = None) -> None:
        super().__init__(f"MCF refused command {cmd:02X}h: {text}")
        self.cmd = cmd
        self.text = text
        self.status = status

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeviceError):
            return NotImplemented
        return (self.cmd, self.text, self.status) == (other.cmd, other.text, other.status)

    def __hash__(self) -> int:
        return hash((self.cmd, self.text))

    def __repr__(self) -> str:
        return f"DeviceError(cmd=0x{self.cmd:02X}, text={self.text!r})"
