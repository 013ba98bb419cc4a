"""What a device says about itself beyond C1h: the USB strings of the port, when there are some."""
from __future__ import annotations

import os


def firmware_strings(port: str) -> dict[str, str]:
    """What the device says about itself beyond C1h: USB strings where the port is a USB device."""
    info: dict[str, str] = {"protocol": "MCF-SFE 1.0"}
    try:
        if port.lower().startswith("usb:"):
            parts = port.split(":")
            vid, pid = int(parts[1], 16), int(parts[2], 16)
            from drivers.usb_fiscal_memory.transport_usb import discover

            for c in discover([(vid, pid)]):
                if len(parts) < 4 or not parts[3] or c.serial == parts[3]:
                    info.update({"usb_id": f"{c.vid:04x}:{c.pid:04x}", "manufacturer": c.manufacturer or "",
                                 "product": c.product or "", "serial": c.serial or ""})
                    break
        elif "://" not in port:
            from serial.tools import list_ports

            real = os.path.realpath(port)
            for p in list_ports.comports():
                if os.path.realpath(p.device) == real and p.vid is not None:
                    info.update({"usb_id": f"{p.vid:04x}:{p.pid:04x}", "manufacturer": p.manufacturer or "",
                                 "product": p.product or "", "serial": p.serial_number or ""})
                    break
    except Exception:  # the strings are informative; provisioning does not depend on them
        pass
    return {k: v[:64] for k, v in info.items() if v}
