"""A pyusb backend with one simulated MCF on its bus, so pyusb's own code runs against it.

``usb.core.find(idVendor=0x1209, idProduct=0x0001, backend=get_backend(engine))`` finds the
device; its descriptors are real (device, one configuration, one vendor-specific interface with
bulk OUT 01h and bulk IN 81h, string descriptors: manufacturer, product, serial = MID), control
GET_DESCRIPTOR requests return their bytes, bulk OUT feeds the engine and bulk IN returns its
output, raising ``USBTimeoutError`` when nothing arrives in time like libusb does. As on Linux
with a CDC-class device, a kernel driver is bound until detached, and claiming before that fails
with "busy". An unplugged device (fault ``unplug``) leaves the bus: enumeration no longer lists
it and I/O fails with "no device".
"""
from __future__ import annotations

import array
import errno
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import usb.backend
import usb.core

from .engine import MCFEngine

VENDOR_ID = 0x1209  # pid.codes
PRODUCT_ID = 0x0001  # pid.codes test PID
EP_OUT = 0x01
EP_IN = 0x81
MAX_PACKET = 64  # full-speed bulk
MANUFACTURER = "Stalela Simulator"
PRODUCT = "MCF Simulator"
LANGID_EN_US = 0x0409
STRING_MANUFACTURER, STRING_PRODUCT, STRING_SERIAL = 1, 2, 3
CONFIGURATION_VALUE = 1

# libusb error codes, as pyusb's libusb1 backend puts them in USBError.backend_error_code.
_LIBUSB_ERROR_NO_DEVICE = -4
_LIBUSB_ERROR_BUSY = -6
_LIBUSB_ERROR_TIMEOUT = -7
_LIBUSB_ERROR_PIPE = -9
_LIBUSB_ERROR_INVALID_PARAM = -2

_GET_STATUS, _GET_DESCRIPTOR, _GET_CONFIGURATION, _SET_CONFIGURATION = 0x00, 0x06, 0x08, 0x09
_DT_DEVICE, _DT_CONFIG, _DT_STRING = 1, 2, 3
_IDLE_STEP = 0.002


class _Descriptor:
    """An attribute bag: pyusb copies descriptor fields off it with getattr."""

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


def _device_descriptor() -> _Descriptor:
    return _Descriptor(
        bLength=18,
        bDescriptorType=_DT_DEVICE,
        bcdUSB=0x0200,
        bDeviceClass=0x00,  # class per interface
        bDeviceSubClass=0x00,
        bDeviceProtocol=0x00,
        bMaxPacketSize0=64,
        idVendor=VENDOR_ID,
        idProduct=PRODUCT_ID,
        bcdDevice=0x0100,
        iManufacturer=STRING_MANUFACTURER,
        iProduct=STRING_PRODUCT,
        iSerialNumber=STRING_SERIAL,
        bNumConfigurations=1,
        bus=1,
        address=7,
        port_number=1,
        port_numbers=(1,),
        speed=2,  # libusb: full speed
    )


def _config_descriptor() -> _Descriptor:
    return _Descriptor(
        bLength=9,
        bDescriptorType=_DT_CONFIG,
        wTotalLength=9 + 9 + 7 + 7,
        bNumInterfaces=1,
        bConfigurationValue=CONFIGURATION_VALUE,
        iConfiguration=0,
        bmAttributes=0x80,  # bus powered
        bMaxPower=50,  # 100 mA
        extra_descriptors=[],
    )


def _interface_descriptor() -> _Descriptor:
    return _Descriptor(
        bLength=9,
        bDescriptorType=4,
        bInterfaceNumber=0,
        bAlternateSetting=0,
        bNumEndpoints=2,
        bInterfaceClass=0xFF,  # vendor specific: raw frames over bulk, no CDC line coding
        bInterfaceSubClass=0x00,
        bInterfaceProtocol=0x00,
        iInterface=0,
        extra_descriptors=[],
    )


def _endpoint_descriptor(address: int) -> _Descriptor:
    return _Descriptor(
        bLength=7,
        bDescriptorType=5,
        bEndpointAddress=address,
        bmAttributes=0x02,  # bulk
        wMaxPacketSize=MAX_PACKET,
        bInterval=0,
        bRefresh=0,
        bSynchAddress=0,
        extra_descriptors=[],
    )


_ENDPOINTS = (EP_OUT, EP_IN)


def _pack(desc: _Descriptor, fmt: str, names: tuple[str, ...]) -> bytes:
    return struct.pack(fmt, *(getattr(desc, n) for n in names))


def _device_bytes() -> bytes:
    return _pack(
        _device_descriptor(),
        "<BBHBBBBHHHBBBB",
        ("bLength", "bDescriptorType", "bcdUSB", "bDeviceClass", "bDeviceSubClass",
         "bDeviceProtocol", "bMaxPacketSize0", "idVendor", "idProduct", "bcdDevice",
         "iManufacturer", "iProduct", "iSerialNumber", "bNumConfigurations"),
    )


def _config_bytes() -> bytes:
    """The whole configuration: configuration, interface and endpoint descriptors."""
    out = _pack(
        _config_descriptor(),
        "<BBHBBBBB",
        ("bLength", "bDescriptorType", "wTotalLength", "bNumInterfaces",
         "bConfigurationValue", "iConfiguration", "bmAttributes", "bMaxPower"),
    )
    out += _pack(
        _interface_descriptor(),
        "<BBBBBBBBB",
        ("bLength", "bDescriptorType", "bInterfaceNumber", "bAlternateSetting",
         "bNumEndpoints", "bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol",
         "iInterface"),
    )
    for address in _ENDPOINTS:
        out += _pack(
            _endpoint_descriptor(address),
            "<BBBBHB",
            ("bLength", "bDescriptorType", "bEndpointAddress", "bmAttributes",
             "wMaxPacketSize", "bInterval"),
        )
    return out


def _string_bytes(text: str) -> bytes:
    encoded = text.encode("utf-16-le")
    return bytes((2 + len(encoded), _DT_STRING)) + encoded


def _usb_error(message: str, code: int, err: int) -> usb.core.USBError:
    return usb.core.USBError(message, code, err)


@dataclass
class SimulatedUsbDevice:
    """The device side: descriptors' state, the claimed interface, bytes on their way in."""

    engine: MCFEngine
    kernel_driver_active: bool = True
    configuration: int = CONFIGURATION_VALUE  # Linux configures a new device at once
    claimed: set[int] = field(default_factory=set)
    resets: int = 0
    _queue: list[tuple[float, bytes]] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def present(self) -> bool:
        return not self.engine.faults.is_unplugged()

    def strings(self) -> dict[int, str]:
        return {
            STRING_MANUFACTURER: MANUFACTURER,
            STRING_PRODUCT: PRODUCT,
            STRING_SERIAL: self.engine.state.mid,
        }

    def flush(self) -> None:
        with self._lock:
            self._queue.clear()
            self._buffer.clear()


@dataclass
class _Handle:
    device: SimulatedUsbDevice
    open: bool = True


class SimulatorBackend(usb.backend.IBackend):
    """``usb.backend.IBackend`` for a bus holding one simulated MCF."""

    def __init__(self, engine: MCFEngine, *, kernel_driver_active: bool = True) -> None:
        super().__init__()
        self.device = SimulatedUsbDevice(engine, kernel_driver_active=kernel_driver_active)

    # -- enumeration and descriptors ---------------------------------------------------------
    def enumerate_devices(self) -> Iterator[SimulatedUsbDevice]:
        if self.device.present:
            yield self.device

    def get_parent(self, dev: SimulatedUsbDevice) -> None:
        return None  # attached to the root hub

    def get_device_descriptor(self, dev: SimulatedUsbDevice) -> _Descriptor:
        return _device_descriptor()

    def get_configuration_descriptor(self, dev: SimulatedUsbDevice, config: int) -> _Descriptor:
        if config != 0:
            raise IndexError(f"Invalid configuration index {config}")
        return _config_descriptor()

    def get_interface_descriptor(
        self, dev: SimulatedUsbDevice, intf: int, alt: int, config: int
    ) -> _Descriptor:
        if config != 0:
            raise IndexError(f"Invalid configuration index {config}")
        if intf != 0:
            raise IndexError(f"Invalid interface index {intf}")
        if alt != 0:
            raise IndexError(f"Invalid alternate setting index {alt}")
        return _interface_descriptor()

    def get_endpoint_descriptor(
        self, dev: SimulatedUsbDevice, ep: int, intf: int, alt: int, config: int
    ) -> _Descriptor:
        self.get_interface_descriptor(dev, intf, alt, config)
        if not 0 <= ep < len(_ENDPOINTS):
            raise IndexError(f"Invalid endpoint index {ep}")
        return _endpoint_descriptor(_ENDPOINTS[ep])

    # -- handles -----------------------------------------------------------------------------
    def _live(self, handle: _Handle) -> SimulatedUsbDevice:
        if not handle.open or not handle.device.present:
            raise _usb_error("No such device (it may have been disconnected)",
                             _LIBUSB_ERROR_NO_DEVICE, errno.ENODEV)
        return handle.device

    def open_device(self, dev: SimulatedUsbDevice) -> _Handle:
        if not dev.present:
            raise _usb_error("No such device", _LIBUSB_ERROR_NO_DEVICE, errno.ENODEV)
        return _Handle(dev)

    def close_device(self, dev_handle: _Handle) -> None:
        dev_handle.open = False

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        device = self._live(dev_handle)
        if config_value not in (0, CONFIGURATION_VALUE):
            raise _usb_error("Invalid parameter", _LIBUSB_ERROR_INVALID_PARAM, errno.EINVAL)
        device.configuration = config_value

    def get_configuration(self, dev_handle: _Handle) -> int:
        return self._live(dev_handle).configuration

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        self._live(dev_handle)
        if intf != 0 or altsetting != 0:
            raise _usb_error("Invalid parameter", _LIBUSB_ERROR_INVALID_PARAM, errno.EINVAL)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        device = self._live(dev_handle)
        if intf != 0:
            raise _usb_error("Invalid parameter", _LIBUSB_ERROR_INVALID_PARAM, errno.EINVAL)
        if device.kernel_driver_active:
            raise _usb_error("Resource busy", _LIBUSB_ERROR_BUSY, errno.EBUSY)
        device.claimed.add(intf)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        dev_handle.device.claimed.discard(intf)

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        return self._live(dev_handle).kernel_driver_active

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        self._live(dev_handle).kernel_driver_active = False

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        device = self._live(dev_handle)
        device.claimed.discard(intf)
        device.kernel_driver_active = True

    def reset_device(self, dev_handle: _Handle) -> None:
        """A port reset: pipes flushed and interfaces released; the MCF's memory stays."""
        device = self._live(dev_handle)
        device.flush()
        device.claimed.clear()
        device.resets += 1

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        self._live(dev_handle)

    # -- transfers ---------------------------------------------------------------------------
    def _claimed(
        self, dev_handle: _Handle, ep: int, intf: int, expected_ep: int
    ) -> SimulatedUsbDevice:
        device = self._live(dev_handle)
        if ep != expected_ep or intf not in device.claimed:
            raise _usb_error("Pipe error", _LIBUSB_ERROR_PIPE, errno.EPIPE)
        return device

    def bulk_write(
        self, dev_handle: _Handle, ep: int, intf: int, data: array.array, timeout: int
    ) -> int:
        device = self._claimed(dev_handle, ep, intf, EP_OUT)
        payload = data.tobytes()
        now = time.monotonic()
        emissions = device.engine.respond(payload)
        with device._lock:
            device._queue += [(now + e.at, e.data) for e in emissions]
        return len(payload)

    def bulk_read(
        self, dev_handle: _Handle, ep: int, intf: int, buff: array.array, timeout: int
    ) -> int:
        device = self._claimed(dev_handle, ep, intf, EP_IN)
        # libusb: a timeout of 0 means wait for ever.
        deadline = time.monotonic() + timeout / 1000 if timeout else float("inf")
        while True:
            device = self._live(dev_handle)
            now = time.monotonic()
            for emission in device.engine.poll():
                with device._lock:
                    device._queue.append((now + emission.at, emission.data))
            with device._lock:
                due = [item for item in device._queue if item[0] <= now]
                device._queue = [item for item in device._queue if item[0] > now]
                for _, data in due:
                    device._buffer += data
                if device._buffer:
                    count = min(len(buff) * buff.itemsize, len(device._buffer))
                    chunk = bytes(device._buffer[:count])
                    del device._buffer[:count]
                    buff[: len(chunk)] = array.array("B", chunk)
                    return count
            if now >= deadline:
                raise usb.core.USBTimeoutError(
                    "Operation timed out", _LIBUSB_ERROR_TIMEOUT, errno.ETIMEDOUT
                )
            time.sleep(min(_IDLE_STEP, max(0.0, deadline - now)))

    def ctrl_transfer(
        self,
        dev_handle: _Handle,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array,
        timeout: int,
    ) -> int:
        device = self._live(dev_handle)
        device_to_host = bool(bmRequestType & 0x80)
        standard = bmRequestType & 0x60 == 0
        if standard and device_to_host and bRequest == _GET_DESCRIPTOR:
            return self._put(data, self._descriptor(device, wValue >> 8, wValue & 0xFF, wIndex))
        if standard and device_to_host and bRequest == _GET_CONFIGURATION:
            return self._put(data, bytes((device.configuration,)))
        if standard and device_to_host and bRequest == _GET_STATUS:
            return self._put(data, b"\x00\x00")
        if standard and not device_to_host and bRequest == _SET_CONFIGURATION:
            self.set_configuration(dev_handle, wValue)
            return 0
        # Anything else (vendor or class requests): the device stalls endpoint 0.
        raise _usb_error("Pipe error", _LIBUSB_ERROR_PIPE, errno.EPIPE)

    @staticmethod
    def _descriptor(device: SimulatedUsbDevice, kind: int, index: int, langid: int) -> bytes:
        if kind == _DT_DEVICE and index == 0:
            return _device_bytes()
        if kind == _DT_CONFIG and index == 0:
            return _config_bytes()
        if kind == _DT_STRING:
            if index == 0:
                return bytes((4, _DT_STRING)) + struct.pack("<H", LANGID_EN_US)
            text = device.strings().get(index)
            if text is not None and langid == LANGID_EN_US:
                return _string_bytes(text)
        raise _usb_error("Pipe error", _LIBUSB_ERROR_PIPE, errno.EPIPE)

    @staticmethod
    def _put(data: array.array, payload: bytes) -> int:
        count = min(len(data) * data.itemsize, len(payload))
        data[:count] = array.array("B", payload[:count])
        return count


def get_backend(
    engine_or_state_path: MCFEngine | str | os.PathLike[str], *, kernel_driver_active: bool = True
) -> SimulatorBackend:
    """A pyusb backend whose bus holds the simulated MCF (an engine, or its state file)."""
    engine = (
        engine_or_state_path
        if isinstance(engine_or_state_path, MCFEngine)
        else MCFEngine(engine_or_state_path)
    )
    return SimulatorBackend(engine, kernel_driver_active=kernel_driver_active)
