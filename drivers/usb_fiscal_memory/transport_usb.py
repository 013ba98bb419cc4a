"""pyusb side: find MCFs on the bus, identify them, reset them, and talk bulk without a tty.

Every entry point takes an optional pyusb ``backend`` so tests (and the simulator) can put a
``usb.backend.IBackend`` underneath and still run pyusb's own ``find`` and endpoint code.
"""
from __future__ import annotations

import errno
import glob
import os
from dataclasses import dataclass
from typing import Any, Sequence, TextIO

import usb.core
import usb.util

from .errors import DeviceNotFound, LinkClosed, PermissionDenied, PortBusy
from .transport import Transport, register_scheme

# pid.codes test pair, used by our simulator. Real vendors' pairs go in this list (and in
# systemd/60-stalela-mcf.rules) once known.
DEFAULT_VID_PIDS: tuple[tuple[int, int], ...] = ((0x1209, 0x0001),)
SYSFS_USB = "/sys/bus/usb/devices"


@dataclass(frozen=True)
class UsbCandidate:
    vid: int
    pid: int
    bus: int | None
    address: int | None
    manufacturer: str | None
    product: str | None
    serial: str | None
    tty: str | None  # /dev/ttyACM0 etc. when a kernel serial driver has bound it

    @property
    def url(self) -> str:
        """What to pass to ``open_transport``: the tty when there is one, else raw USB."""
        if self.tty:
            return self.tty
        base = f"usb:{self.vid:04x}:{self.pid:04x}"
        return f"{base}:{self.serial}" if self.serial else base


def _usb_fault(what: str, exc: usb.core.USBError) -> Exception:
    code = getattr(exc, "errno", None) or getattr(exc, "backend_error_code", None)
    if code in (errno.EACCES, errno.EPERM, -3):  # -3: LIBUSB_ERROR_ACCESS
        return PermissionDenied(f"{what}: no permission")
    if code in (errno.EBUSY, -6):  # -6: LIBUSB_ERROR_BUSY
        return PortBusy(f"{what}: interface claimed by another process")
    if code in (errno.ENODEV, -4):  # -4: LIBUSB_ERROR_NO_DEVICE
        return LinkClosed(f"{what}: device gone")
    return LinkClosed(f"{what}: {exc}")


def _string(dev: Any, index: int) -> str | None:
    # Reading strings needs access to the device node; without the udev rule this fails, and
    # discovery should still list the device rather than crash.
    if not index:
        return None
    try:
        return usb.util.get_string(dev, index)
    except (usb.core.USBError, ValueError, NotImplementedError):
        return None


def _sysfs_name(dev: Any) -> str | None:
    ports = getattr(dev, "port_numbers", None)
    if not ports or dev.bus is None:
        return None
    return f"{dev.bus}-{'.'.join(str(p) for p in ports)}"


def tty_for(dev: Any, sysfs_root: str = SYSFS_USB) -> str | None:
    """The /dev node the kernel made for this USB device (cdc_acm or a usb-serial driver)."""
    name = _sysfs_name(dev)
    if name is None:
        return None
    base = os.path.join(sysfs_root, name)
    # cdc_acm: <dev>:<cfg>.<intf>/tty/ttyACM0 ; usb-serial (ftdi, cp210x...): <dev>:<cfg>.<intf>/ttyUSB0
    hits = sorted(glob.glob(os.path.join(base + ":*", "tty", "tty*")))
    hits += sorted(glob.glob(os.path.join(base + ":*", "ttyUSB*")))
    return "/dev/" + os.path.basename(hits[0]) if hits else None


def _matches(vid_pids: Sequence[tuple[int, int]]) -> Any:
    wanted = {(int(v), int(p)) for v, p in vid_pids}
    return lambda d: (d.idVendor, d.idProduct) in wanted


def discover(
    vid_pids: Sequence[tuple[int, int]] | None = None,
    backend: Any = None,
    sysfs_root: str = SYSFS_USB,
) -> list[UsbCandidate]:
    """Every USB device whose VID:PID is in ``vid_pids`` (default: ``DEFAULT_VID_PIDS``)."""
    pairs = DEFAULT_VID_PIDS if vid_pids is None else vid_pids
    try:
        found = list(usb.core.find(find_all=True, backend=backend, custom_match=_matches(pairs)))
    except usb.core.NoBackendError as exc:
        raise DeviceNotFound("no libusb backend available (install libusb-1.0)") from exc
    result = []
    for dev in found:
        result.append(
            UsbCandidate(
                vid=dev.idVendor,
                pid=dev.idProduct,
                bus=dev.bus,
                address=dev.address,
                manufacturer=_string(dev, dev.iManufacturer),
                product=_string(dev, dev.iProduct),
                serial=_string(dev, dev.iSerialNumber),
                tty=tty_for(dev, sysfs_root),
            )
        )
    return result


def find_device(vid: int, pid: int, serial: str | None = None, backend: Any = None) -> Any:
    """The pyusb device for VID:PID (and serial number when given), or DeviceNotFound."""
    def match(d: Any) -> bool:
        return serial is None or _string(d, d.iSerialNumber) == serial

    try:
        dev = usb.core.find(idVendor=vid, idProduct=pid, backend=backend, custom_match=match)
    except usb.core.NoBackendError as exc:
        raise DeviceNotFound("no libusb backend available (install libusb-1.0)") from exc
    if dev is None:
        label = f"{vid:04x}:{pid:04x}" + (f" serial {serial}" if serial else "")
        raise DeviceNotFound(f"no USB device {label}")
    return dev


def usb_reset(vid: int, pid: int, serial: str | None = None, backend: Any = None) -> None:
    """USB port reset: what a technician does instead of unplugging a hung MCF."""
    dev = find_device(vid, pid, serial, backend)
    try:
        dev.reset()
    except usb.core.USBError as exc:
        raise _usb_fault(f"reset {vid:04x}:{pid:04x}", exc) from exc
    finally:
        usb.util.dispose_resources(dev)


def _bulk_endpoints(dev: Any) -> tuple[int, Any, Any]:
    """First interface with a bulk OUT and a bulk IN (CDC-ACM: the data interface)."""
    cfg = dev.get_active_configuration()
    for intf in cfg:
        out_ep = in_ep = None
        for ep in intf:
            if usb.util.endpoint_type(ep.bmAttributes) != usb.util.ENDPOINT_TYPE_BULK:
                continue
            if usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_OUT:
                out_ep = out_ep or ep
            else:
                in_ep = in_ep or ep
        if out_ep is not None and in_ep is not None:
            return intf.bInterfaceNumber, out_ep, in_ep
    raise DeviceNotFound("USB device has no interface with bulk IN and OUT endpoints")


class UsbBulkTransport(Transport):
    """Raw bulk I/O for an MCF used without the kernel's CDC-ACM driver."""

    def __init__(
        self,
        vid: int,
        pid: int,
        serial: str | None = None,
        backend: Any = None,
        *,
        spy: TextIO | None = None,
    ) -> None:
        super().__init__(spy=spy)
        self.vid, self.pid, self.serial = vid, pid, serial
        self._backend = backend
        self._dev: Any = None
        self._intf: int | None = None
        self._out: Any = None
        self._in: Any = None
        self._reattach = False
        self._rx = bytearray()  # IN packets are read whole; what the caller didn't take waits here

    def __repr__(self) -> str:
        return f"UsbBulkTransport({self.vid:04x}:{self.pid:04x}, serial={self.serial!r})"

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> "UsbBulkTransport":
        """``usb:VID:PID[:SERIAL]`` with hexadecimal VID and PID."""
        parts = url.split(":", 3)
        if len(parts) < 3 or parts[0].lower() != "usb":
            raise DeviceNotFound(f"bad USB URL {url!r}, expected usb:VID:PID[:SERIAL]")
        try:
            vid, pid = int(parts[1], 16), int(parts[2], 16)
        except ValueError as exc:
            raise DeviceNotFound(f"bad VID:PID in {url!r}") from exc
        serial = parts[3] if len(parts) == 4 and parts[3] else None
        return cls(vid, pid, serial, **kw)

    def _open(self) -> None:
        dev = find_device(self.vid, self.pid, self.serial, self._backend)
        label = f"{self.vid:04x}:{self.pid:04x}"
        try:
            try:
                dev.get_active_configuration()
            except usb.core.USBError:
                dev.set_configuration()
            intf, out_ep, in_ep = _bulk_endpoints(dev)
            try:
                if dev.is_kernel_driver_active(intf):
                    dev.detach_kernel_driver(intf)
                    self._reattach = True
            except NotImplementedError:
                pass  # backends without kernel drivers (other OSes, test backends)
            usb.util.claim_interface(dev, intf)
        except usb.core.USBError as exc:
            usb.util.dispose_resources(dev)
            raise _usb_fault(f"open {label}", exc) from exc
        self._dev, self._intf, self._out, self._in = dev, intf, out_ep, in_ep
        self._rx.clear()

    def _close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is None:
            return
        try:
            usb.util.release_interface(dev, self._intf)
            if self._reattach:
                dev.attach_kernel_driver(self._intf)
        except (usb.core.USBError, NotImplementedError):
            pass  # unplugged: nothing to give back
        finally:
            self._reattach = False
            usb.util.dispose_resources(dev)

    def _write(self, data: bytes) -> None:
        if self._dev is None:
            raise LinkClosed("USB transport is closed")
        try:
            self._out.write(data, timeout=1000)
        except usb.core.USBTimeoutError as exc:
            raise LinkClosed("USB bulk OUT timed out") from exc
        except usb.core.USBError as exc:
            raise _usb_fault("bulk OUT", exc) from exc

    def _read(self, max_bytes: int, timeout: float) -> bytes:
        if self._dev is None:
            raise LinkClosed("USB transport is closed")
        if not self._rx:
            # Always ask for a whole packet: a shorter buffer overflows on a full packet.
            size = max(int(self._in.wMaxPacketSize), 64)
            try:
                chunk = self._in.read(size, timeout=max(1, int(timeout * 1000)))
            except usb.core.USBTimeoutError:
                return b""
            except usb.core.USBError as exc:
                raise _usb_fault("bulk IN", exc) from exc
            self._rx += bytes(chunk)
        out = bytes(self._rx[:max_bytes])
        del self._rx[:max_bytes]
        return out

    def _reset_input(self) -> None:
        self._rx.clear()
        while self._read(4096, 0.001):
            self._rx.clear()


register_scheme("usb", UsbBulkTransport.from_url)
