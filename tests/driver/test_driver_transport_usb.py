"""USB discovery, reset and bulk transport run through pyusb itself, over a fake IBackend.

``LoopbackBackend`` stands in for libusb: one CDC-like device (1209:0001) whose bulk OUT
frames are answered on bulk IN by a tiny responder, so ``usb.core.find``, string descriptors,
configuration, interface claiming and endpoint I/O are all pyusb's real code. The simulator's
own backend (simulator/usb_backend.py) is exercised by the end-to-end tests.
"""
from __future__ import annotations

import array
import errno
from types import SimpleNamespace

import pytest
import usb.backend
import usb.core

from drivers.usb_fiscal_memory.client import MCFClient
from drivers.usb_fiscal_memory.errors import DeviceNotFound, PermissionDenied
from drivers.usb_fiscal_memory.framing import Deframer, Status, decode_command, encode_response
from drivers.usb_fiscal_memory.protocol import Link
from drivers.usb_fiscal_memory.transport import open_transport
from drivers.usb_fiscal_memory.transport_usb import UsbBulkTransport, discover, tty_for, usb_reset

RATES = ",".join(["0.00", "16.00"] + ["0.00"] * 14)
C1H = f"USB-1,A1234567B,20250301100320,1,1,0,20250301100305,FV,SIG,FN1,10.00,{RATES}".encode()
STRINGS = {1: "Stalela", 2: "MCF simulator", 3: "SN0001"}


def _ep(address: int, attrs: int = 0x02) -> SimpleNamespace:
    return SimpleNamespace(bLength=7, bDescriptorType=5, bEndpointAddress=address, bmAttributes=attrs,
                           wMaxPacketSize=64, bInterval=0, bRefresh=0, bSynchAddress=0, extra_descriptors=[])


class LoopbackBackend(usb.backend.IBackend):
    """One device: interface 0 = CDC control (interrupt IN), interface 1 = data (bulk OUT/IN)."""

    def __init__(self, vid: int = 0x1209, pid: int = 0x0001, kernel_driver: bool = True) -> None:
        self.desc = SimpleNamespace(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=2, bDeviceSubClass=0,
            bDeviceProtocol=0, bMaxPacketSize0=64, idVendor=vid, idProduct=pid, bcdDevice=0x0100,
            iManufacturer=1, iProduct=2, iSerialNumber=3, bNumConfigurations=1, address=7, bus=1,
            port_number=2, port_numbers=(2,), speed=2,
        )
        self.kernel_driver = {0: kernel_driver, 1: kernel_driver}
        self.claimed: set[int] = set()
        self.resets = 0
        self.configuration = 1
        self.deframer = Deframer("command")
        self.to_host = bytearray()
        self.frames: list[bytes] = []

    def enumerate_devices(self):
        yield "dev0"

    def get_device_descriptor(self, dev):
        return self.desc

    def get_configuration_descriptor(self, dev, config):
        return SimpleNamespace(bLength=9, bDescriptorType=2, wTotalLength=67, bNumInterfaces=2,
                               bConfigurationValue=1, iConfiguration=0, bmAttributes=0x80, bMaxPower=50,
                               extra_descriptors=[])

    def get_interface_descriptor(self, dev, intf, alt, config):
        if alt > 0:
            raise IndexError("one alternate setting only")  # how pyusb learns the count
        if intf == 0:
            return SimpleNamespace(bLength=9, bDescriptorType=4, bInterfaceNumber=0, bAlternateSetting=0,
                                   bNumEndpoints=1, bInterfaceClass=2, bInterfaceSubClass=2,
                                   bInterfaceProtocol=1, iInterface=0, extra_descriptors=[])
        return SimpleNamespace(bLength=9, bDescriptorType=4, bInterfaceNumber=1, bAlternateSetting=0,
                               bNumEndpoints=2, bInterfaceClass=10, bInterfaceSubClass=0,
                               bInterfaceProtocol=0, iInterface=0, extra_descriptors=[])

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        if intf == 0:
            return _ep(0x83, 0x03)
        return [_ep(0x01), _ep(0x82)][ep]

    def open_device(self, dev):
        return "handle"

    def close_device(self, dev_handle):
        pass

    def set_configuration(self, dev_handle, config_value):
        self.configuration = config_value

    def get_configuration(self, dev_handle):
        return self.configuration

    def claim_interface(self, dev_handle, intf):
        if self.kernel_driver.get(intf):
            raise usb.core.USBError("busy", errno.EBUSY, errno.EBUSY)
        self.claimed.add(intf)

    def release_interface(self, dev_handle, intf):
        self.claimed.discard(intf)

    def is_kernel_driver_active(self, dev_handle, intf):
        return self.kernel_driver.get(intf, False)

    def detach_kernel_driver(self, dev_handle, intf):
        self.kernel_driver[intf] = False

    def attach_kernel_driver(self, dev_handle, intf):
        self.kernel_driver[intf] = True

    def reset_device(self, dev_handle):
        self.resets += 1

    def ctrl_transfer(self, dev_handle, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        if bRequest == 0x06 and wValue >> 8 == 3:  # GET_DESCRIPTOR(STRING)
            index = wValue & 0xFF
            if index == 0:
                payload = bytes([4, 3, 0x09, 0x04])  # langid 0409h
            else:
                text = STRINGS[index].encode("utf-16-le")
                payload = bytes([2 + len(text), 3]) + text
            n = min(len(payload), len(data))
            data[:n] = array.array("B", payload[:n])
            return n
        raise usb.core.USBError("stall", errno.EPIPE, errno.EPIPE)

    def bulk_write(self, dev_handle, ep, intf, data, timeout):
        assert intf == 1 and ep == 0x01
        for event in self.deframer.feed(bytes(data)):
            if event[0] == "frame":
                self.frames.append(event[1])
                cmd = decode_command(event[1])
                answer = C1H if cmd.cmd == 0xC1 else b"R"
                self.to_host += encode_response(cmd.seq, cmd.cmd, answer, Status().to_bytes())
        return len(data)

    def bulk_read(self, dev_handle, ep, intf, buff, timeout):
        assert ep == 0x82
        if not self.to_host:
            raise usb.core.USBTimeoutError("timeout", errno.ETIMEDOUT, -7)
        n = min(len(buff), 64, len(self.to_host))  # one packet at a time, like the bus
        buff[:n] = array.array("B", self.to_host[:n])
        del self.to_host[:n]
        return n


def test_discover_reads_strings_and_maps_tty(tmp_path):
    (tmp_path / "1-2:1.0" / "tty" / "ttyACM3").mkdir(parents=True)
    backend = LoopbackBackend()
    found = discover(backend=backend, sysfs_root=str(tmp_path))
    assert len(found) == 1
    c = found[0]
    assert (c.vid, c.pid, c.bus, c.address) == (0x1209, 0x0001, 1, 7)
    assert (c.manufacturer, c.product, c.serial) == ("Stalela", "MCF simulator", "SN0001")
    assert c.tty == "/dev/ttyACM3" and c.url == "/dev/ttyACM3"
    assert discover([(0x1234, 0x5678)], backend=backend) == []


def test_candidate_without_tty_gives_usb_url(tmp_path):
    c = discover(backend=LoopbackBackend(), sysfs_root=str(tmp_path))[0]
    assert c.tty is None and c.url == "usb:1209:0001:SN0001"


def test_usb_serial_tty_layout(tmp_path):
    (tmp_path / "1-2:1.0" / "ttyUSB0").mkdir(parents=True)
    dev = SimpleNamespace(bus=1, port_numbers=(2,))
    assert tty_for(dev, str(tmp_path)) == "/dev/ttyUSB0"


def test_bulk_transport_through_pyusb_detaches_claims_and_talks():
    backend = LoopbackBackend()
    with open_transport("usb:1209:0001:SN0001", backend=backend) as transport:
        assert isinstance(transport, UsbBulkTransport)
        assert backend.claimed == {1} and backend.kernel_driver[1] is False
        client = MCFClient(Link(transport, sync=False, first_seq=0x20))
        assert client.status().mid == "USB-1"  # > 64 bytes: several IN packets
        client.set_client()
    assert backend.claimed == set()
    assert backend.kernel_driver[1] is True  # given back to the kernel on close
    assert [decode_command(f).cmd for f in backend.frames] == [0xC1, 0xC3]


def test_bulk_transport_wrong_serial_is_not_found():
    with pytest.raises(DeviceNotFound, match="serial NOPE"):
        UsbBulkTransport(0x1209, 0x0001, "NOPE", backend=LoopbackBackend()).open()


def test_usb_reset():
    backend = LoopbackBackend()
    usb_reset(0x1209, 0x0001, backend=backend)
    assert backend.resets == 1
    with pytest.raises(DeviceNotFound):
        usb_reset(0x1209, 0x0002, backend=backend)


def test_claim_permission_error_names_the_fix():
    backend = LoopbackBackend(kernel_driver=False)

    def refuse(dev_handle, intf):
        raise usb.core.USBError("Access denied", errno.EACCES, errno.EACCES)

    backend.claim_interface = refuse  # type: ignore[method-assign]
    with pytest.raises(PermissionDenied, match="dialout"):
        UsbBulkTransport(0x1209, 0x0001, backend=backend).open()


@pytest.mark.parametrize("url", ["usb:zz:0001", "usb:1209"])
def test_bad_usb_urls(url):
    with pytest.raises(DeviceNotFound):
        open_transport(url)
