"""The trust boundary drawn by the folder layout, checked on every import in the tree.

The cloud must not share code with the agent except through the `fiscal/` kernel; the driver and
the simulator know nothing of the services above them; the kernel knows nothing of ours.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"agent", "cloud_stub", "drivers", "simulator", "fiscal", "bench", "tests"}

# package -> the packages of ours it may import (besides itself)
ALLOWED = {
    "fiscal": set(),
    "drivers": set(),
    "simulator": {"drivers"},
    "cloud_stub": {"fiscal"},
    "agent": {"fiscal", "drivers"},
}
# The one `stalela` command is the composition root: its wiring (agent/cli/) hosts the simulator's
# and the cloud's command groups and starts them for the quick start. Nothing else in agent/ may.
COMPOSITION_ROOT = {("agent", "cli"): {"simulator", "cloud_stub"}}


def imported_modules(path: Path, package_root: Path) -> set[str]:
    """Absolute dotted names imported by one file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    here = path.relative_to(package_root.parent).with_suffix("").parts
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level]
                if path.name == "__init__.py":
                    base = here[: len(here) - node.level + 1]
                module = ".".join(base + ((node.module,) if node.module else ()))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def violations(package: str, root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).parts
        allowed = ALLOWED[package] | COMPOSITION_ROOT.get(rel[:2], set())
        for module in imported_modules(path, root / package):
            top = module.split(".")[0]
            if top in OURS and top != package and top not in allowed:
                out.append(f"{path.relative_to(root)} imports {module}")
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_its_layer_allows(package):
    assert violations(package) == []


def test_the_driver_finds_sim_through_an_entry_point(tmp_path):
    # The driver finds sim:// through an entry point, never by importing the simulator.
    assert violations("drivers") == []
    from drivers.usb_fiscal_memory.transport import open_transport
    transport = open_transport(f"sim://{tmp_path}/state.json")
    assert type(transport).__module__.startswith("simulator.")


@pytest.mark.parametrize("module, forbidden", [
    ("agent/daemon.py", "agent.cli"),
    ("agent/service.py", "agent.api"),
])
def test_the_daemon_and_the_service_do_not_import_upward(module, forbidden):
    path = ROOT / module
    imports = imported_modules(path, ROOT / "agent")
    assert not [m for m in imports if m == forbidden or m.startswith(forbidden + ".")]


def test_the_check_catches_a_planted_violation(tmp_path):
    # The checker itself must be able to fail: plant each kind of forbidden import.
    for package, line in [("cloud_stub", "from agent.journal import Journal"),
                          ("fiscal", "import cloud_stub.app"),
                          ("drivers", "from simulator import inprocess"),
                          ("simulator", "import agent.config")]:
        (tmp_path / package / "sub").mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "sub" / "bad.py").write_text(line + "\n")
        found = violations(package, tmp_path)
        assert found and "bad.py" in found[0], (package, line)
        (tmp_path / package / "sub" / "bad.py").unlink()
