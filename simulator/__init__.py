"""A software MCF (the DGI's fiscal device) that any SFE can talk to.

Bottom up:

* ``amounts``: the device's own item and subtotal arithmetic (31h, 33h);
* ``state``: the persistent fiscal memory (atomic state file + append-only journal);
* ``sig``: the 24-character security code (HMAC of the invoice content);
* ``invoice``, ``refusals``, ``device``: the rules of chapter 4, command by command;
* ``faults``: the fault switchboard;
* ``engine``: frames in, timed frames out (NAK, same-SEQ repeat, faults, wire timing);
* links: ``inprocess`` (the driver's Transport, ``sim://``), ``pty_link``, ``tcp_link``,
  ``usb_backend`` (a pyusb backend), sharing ``stream``;
* ``cli``: ``stalela sim ...`` / ``python -m simulator``.

The framing is the driver's (``drivers.usb_fiscal_memory.framing``): one implementation of
the wire format for both sides.
"""
