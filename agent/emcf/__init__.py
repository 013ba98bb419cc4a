"""The DGI's e-MCF HTTP API served by the agent on localhost (docs/emcf-compat.md): routes,
the mapping of e-MCF bodies to our InvoiceRequest, and the durable phase 1 requests."""
