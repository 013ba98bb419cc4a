"""`python -m cloud_stub ...` = `stalela cloud ...`."""
from .cli import cloud

cloud(prog_name="stalela cloud")
