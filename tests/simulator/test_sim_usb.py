"""The simulated MCF on a pyusb backend: pyusb's own find, descriptor and endpoint code runs."""
from __future__ import annotations

from decimal import Decimal
from typing import Any, Iterator

import pytest
import usb.core
import usb.util

from drivers.usb_fiscal_memory.client import MCFClient
from drivers.usb_fiscal_memory.errors import LinkClosed
from drivers.usb_fiscal_memory.protocol import Link
from drivers.usb_fiscal_memory.transport_usb import UsbBulkTransport, discover, usb_reset
from drivers.usb_fiscal_memory.framing import decode_response, encode_command
from simulator.engine import MCFEngine
from simulator.usb_backend import EP_IN, EP_OUT, SimulatorBackend, get_backend

from sim_helpers import dgi_example


@pytest.fixture
def backend(engine: MCFEngine) -> SimulatorBackend:
    return get_backend(engine)


@pytest.fixture
def device(backend: SimulatorBackend) -> Iterator[Any]:
    dev = usb.core.find(idVendor=0x1209, idProduct=0x0001, backend=backend)
    assert dev is not None
    yield dev
    usb.util.dispose_resources(dev)


def test_find_and_read_string_descriptors(device: Any) -> None:
    assert (device.idVendor, device.idProduct, device.bNumConfigurations) == (0x1209, 0x0001, 1)
    assert usb.util.get_string(device, device.iManufacturer) == "Stalela Simulator"
    assert usb.util.get_string(device, device.iProduct) == "MCF Simulator"
    assert usb.util.get_string(device, device.iSerialNumber) == "SIM0000001-1"
    assert device.langids == (0x0409,)


def test_descriptors_describe_one_bulk_interface(device: Any) -> None:
    cfg = device.get_active_configuration()
    (intf,) = list(cfg)
    endpoints = {ep.bEndpointAddress: ep for ep in intf}
    assert set(endpoints) == {EP_OUT, EP_IN}
    for ep in endpoints.values():
        assert usb.util.endpoint_type(ep.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK
    raw = usb.control.get_descriptor(device, 0x40, usb.util.DESC_TYPE_CONFIG, 0)
    assert len(raw) == cfg.wTotalLength == 32


def test_c1h_over_bulk_endpoints(device: Any) -> None:
    with pytest.raises(usb.core.USBError) as busy:
        device.write(EP_OUT, encode_command(0x21, 0xC1, b""))
    assert busy.value.errno == 16  # the kernel driver holds the interface
    assert device.is_kernel_driver_active(0)
    device.detach_kernel_driver(0)
    assert device.write(EP_OUT, encode_command(0x21, 0xC1, b"")) == 10
    response = decode_response(bytes(device.read(EP_IN, 512, timeout=500)))
    assert (response.seq, response.cmd) == (0x21, 0xC1)
    assert response.data.startswith(b"SIM0000001-1,")
    with pytest.raises(usb.core.USBTimeoutError):
        device.read(EP_IN, 64, timeout=50)


def test_unplugged_device_leaves_the_bus(engine: MCFEngine, backend: SimulatorBackend) -> None:
    engine.faults.unplug()
    assert usb.core.find(idVendor=0x1209, idProduct=0x0001, backend=backend) is None
    engine.faults.replug()
    assert usb.core.find(idVendor=0x1209, idProduct=0x0001, backend=backend) is not None


def test_driver_discovery_and_reset(backend: SimulatorBackend) -> None:
    (found,) = discover(backend=backend, sysfs_root="/nonexistent")
    assert (found.manufacturer, found.product, found.serial) == ("Stalela Simulator", "MCF Simulator", "SIM0000001-1")
    assert found.url == "usb:1209:0001:SIM0000001-1"
    usb_reset(0x1209, 0x0001, backend=backend)
    assert backend.device.resets == 1


def test_whole_invoice_through_the_driver_bulk_transport(engine: MCFEngine, backend: SimulatorBackend) -> None:
    transport = UsbBulkTransport(0x1209, 0x0001, "SIM0000001-1", backend=backend)
    client = MCFClient(Link(transport, timeout=0.5))
    try:
        sealed = client.seal_invoice(dgi_example("USB-1"))
        assert backend.device.kernel_driver_active is False  # the driver detached it
    finally:
        client.link.close()
    assert backend.device.kernel_driver_active is True  # and gave it back on close
    assert sealed.tc == 1 and engine.state.last_invoice.mv == "4064.00"  # type: ignore[union-attr]


def test_unplug_during_bulk_io_is_a_link_error(engine: MCFEngine, backend: SimulatorBackend) -> None:
    transport = UsbBulkTransport(0x1209, 0x0001, backend=backend)
    transport.open()
    try:
        engine.faults.unplug()
        with pytest.raises(LinkClosed):
            transport.write(encode_command(0x21, 0xC1, b""))
    finally:
        engine.faults.replug()
        transport.close()


def test_amounts_over_usb_are_the_devices(engine: MCFEngine, backend: SimulatorBackend) -> None:
    client = MCFClient(Link(UsbBulkTransport(0x1209, 0x0001, backend=backend), timeout=0.5))
    try:
        client.set_client()
        from drivers.usb_fiscal_memory.commands import AddItem

        client.open_invoice(dgi_example("USB-2").opening)
        item = client.add_item(AddItem("JUS", "BIE", "B", Decimal("16"), Decimal("1860"), Decimal("930"), Decimal("2")))
        assert (item.mv, item.mt) == (Decimal("1860.00"), Decimal("256.55"))
        client.cancel()
    finally:
        client.link.close()
