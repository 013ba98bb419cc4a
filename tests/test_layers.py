"""The trust boundary drawn by the folder layout, checked on every import in the tree.

The cloud must not share code with the agent except through the `fiscal/` kernel; the driver and
the simulator know nothing of the services above them; the kernel knows nothing of ours.
"""
from __future__ import annotations

import ast
import re
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


# ------------------------------------------------------------------ the agent's SQL lives in agent/store/
# Every statement the agent sends to SQLite (queries, writes, BEGIN/COMMIT, PRAGMA) is written in
# the repository layer, agent/store/ (its migrations included): elsewhere a module calls its typed
# functions. Docstrings and comments may name SQL; code may not hold it or run it.
SQL_HOME = ("agent", "store")
RUNS_SQL = {"execute", "executemany", "executescript"}
SQL_TEXT = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP|PRAGMA|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b"
    r"|\bSELECT\b.*\bFROM\b|\bINSERT\s+(OR\s+[A-Z]+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\b(AND|OR|WHERE)\s+(NOT\s+)?EXISTS\b|\bORDER\s+BY\b|\bLIMIT\s+\?",
    re.S)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def sql_outside_the_store(root: Path = ROOT) -> list[str]:
    """`file:line what` for each SQL text or execute call in agent/ outside agent/store/."""
    out = []
    for path in sorted((root / "agent").rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[:2] == SQL_HOME:
            continue
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RUNS_SQL:
                out.append(f"{rel}:{node.lineno} calls .{node.func.attr}()")
            elif isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                if SQL_TEXT.search(text):
                    out.append(f"{rel}:{node.lineno} holds SQL {text[:60]!r}")
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                  and SQL_TEXT.search(node.value)):
                out.append(f"{rel}:{node.lineno} holds SQL {node.value[:60]!r}")
    return out


def test_the_agents_sql_lives_in_the_store_only():
    assert sql_outside_the_store() == []


@pytest.mark.parametrize("line", [
    'conn.execute("SELECT 1")',
    'def f(c): return c.executemany(q, [])',
    'journal.reader.executescript(script)',
    'QUERY = "SELECT body FROM invoices WHERE id = ?"',
    'Q = f"UPDATE invoices SET sync_state = {state!r}"',
    'BEGIN = "BEGIN IMMEDIATE"',
    'TAIL = " AND NOT EXISTS (SELECT 1 FROM invoices i)"',
])
def test_the_sql_check_catches_a_planted_statement(tmp_path, line):
    (tmp_path / "agent" / "store").mkdir(parents=True)
    (tmp_path / "agent" / "store" / "ok.py").write_text('def f(c):\n    return c.execute("SELECT 1 FROM t")\n')
    (tmp_path / "agent" / "fine.py").write_text(
        '"""Reads with SELECT ... FROM invoices, in agent/store/."""\n'
        'def f():\n    """Runs UPDATE invoices SET x through the store."""\n'
        '    return "-----BEGIN PUBLIC KEY-----", "the invoices were selected from the outbox"\n')
    assert sql_outside_the_store(tmp_path) == []  # the store and prose are not flagged
    (tmp_path / "agent" / "sub").mkdir()
    (tmp_path / "agent" / "sub" / "bad.py").write_text(line + "\n")
    found = sql_outside_the_store(tmp_path)
    assert found and all(f.startswith("agent/sub/bad.py:1 ") for f in found), found


# ------------------------------------------------------------------ public interfaces between modules
# A module uses another object through its public names: `other._x` is that object's own business.
# Allowed: self/cls, a class of the same module, and namedtuple's public `_replace`.
PUBLIC_ANYWAY = {"_replace", "_asdict", "_fields", "_make"}


def protected_uses(root: Path = ROOT) -> list[str]:
    out = []
    for path in sorted((root / "agent").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        own = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)} | {"self", "cls"}
        imported_private = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
        out += [f"{path.relative_to(root)} imports {name}" for name in imported_private]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and node.attr not in PUBLIC_ANYWAY
                    and not (isinstance(node.value, ast.Name) and node.value.id in own)):
                out.append(f"{path.relative_to(root)}:{node.lineno} uses {ast.unparse(node)}")
    return out


def test_modules_use_each_other_through_public_names():
    assert protected_uses() == []


@pytest.mark.parametrize("line", ["owner._answer(message)", "MCFClient._recovered(mcf, fn)",
                                  "self.journal._commit_batch(batch)", "from .receipts.render import _latin1"])
def test_the_public_names_check_catches_a_planted_use(tmp_path, line):
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "fine.py").write_text(
        "class A:\n    _n = 0\n    def f(self):\n        return self._n + A._n + p._replace(x=1).x\n")
    assert protected_uses(tmp_path) == []
    (tmp_path / "agent" / "bad.py").write_text(line + "\n")
    assert [f for f in protected_uses(tmp_path) if f.startswith("agent/bad.py")]
