"""A simulated DGI e-MCF: the HTTP normalization service the cloud forwards invoices to.

As faithful to the public API (/work/shared/spec/emcf.md) as `simulator.device` is to the MCF:
a JWT per point of sale, the two-phase billing (POST then PUT confirm / cancel), at most
`max_pending` unconfirmed requests per point of sale, expiry of unconfirmed requests, its own
counters, codes and QR, state kept in SQLite across restarts, and a fault switchboard.
"""
