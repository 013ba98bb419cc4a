"""``python -m simulator``: the same commands as ``stalela sim``."""
from .cli import sim

if __name__ == "__main__":
    sim(prog_name="python -m simulator")
