"""docs/operations.md is a runbook an operator can follow: every alert rule has its subsection,
the rules' runbook links and the contents list land on headings that exist, and every `stalela …`
command it (or an alert's text) tells someone to run is a real command."""
from __future__ import annotations

import re

import click
import pytest
import yaml

from agent.cli.main import cli
from tests.support import ROOT

RUNBOOK = ROOT / "docs" / "operations.md"
RULE_FILES = sorted((ROOT / "docs" / "monitoring").glob("*-alerts.yml"))


def _slug(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(text: str) -> list[tuple[int, str]]:
    """(level, text) of each heading, outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6}) (.+)", line)):
            out.append((len(m.group(1)), m.group(2)))
    return out


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for _, heading in _headings(text):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _rules() -> list[dict]:
    assert len(RULE_FILES) == 2  # agent and cloud
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def _alerts_section(text: str) -> list[str]:
    """The level-3 headings under `## Alerts`."""
    inside, names = False, []
    for level, heading in _headings(text):
        if level == 2:
            inside = heading == "Alerts"
        elif level == 3 and inside:
            names.append(heading)
    return names


def test_every_alert_rule_has_a_subsection_and_its_runbook_url_lands_on_it():
    text = RUNBOOK.read_text()
    rules = _rules()
    documented = _alerts_section(text)
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) > 10
    assert sorted(documented) == sorted(names)  # one subsection per rule, and no stale one
    anchors = _anchors(text)
    for rule in rules:
        url = rule["annotations"].get("runbook_url", "")
        assert url == f"docs/operations.md#{_slug(rule['alert'])}", rule["alert"]
        assert url.split("#")[1] in anchors


def test_every_link_to_an_anchor_of_the_runbook_exists():
    text = RUNBOOK.read_text()
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) > 20  # the contents list, at least
    assert sorted(set(links) - _anchors(text)) == []
    # The contents list comes first and reaches the parts the issue asks for.
    contents = text[:text.index("\n## ")]
    for anchor in ("the-cloud-merchants-and-outlets", "dashboard", "backup-and-restore", "tls",
                   "installing-on-an-outlet-box", "device-mode", "upgrading", "alerts", "logs"):
        assert f"(#{anchor})" in contents, anchor


# `stalela` then its words, where the word after it is a command (not `sudo -u stalela`,
# `-U stalela` or a path such as /opt/stalela/...).
COMMAND = re.compile(r"(?<![\w.-])(?<!-u )(?<!-U )(?<!-o )(?<!-g )stalela((?:[ \t]+[a-z][a-z0-9-]*(?=[\s`'\"|)]|$))+)")


def _commands(text: str) -> list[list[str]]:
    return [m.group(1).split() for m in COMMAND.finditer(text)]


def _resolve(words: list[str]) -> str | None:
    """None when `stalela WORDS…` names a command (its leading words walk click's tree down to a
    command; the rest are arguments), else what is wrong."""
    node: click.Command = cli
    path = ["stalela"]
    for word in words:
        if not isinstance(node, click.Group):
            return None  # a leaf: the rest are its arguments
        sub = node.get_command(None, word)  # loads a lazily imported group (agent/cli/main.py)
        if sub is None:
            return f"`{' '.join(path)}` has no command `{word}`"
        node, path = sub, path + [word]
    return None


def test_every_stalela_command_the_runbook_and_the_alerts_name_exists():
    sources = {"docs/operations.md": RUNBOOK.read_text()}
    sources.update({f"docs/monitoring/{p.name}": p.read_text() for p in RULE_FILES})
    found, wrong = 0, []
    for name, text in sources.items():
        for words in _commands(text):
            found += 1
            if (problem := _resolve(words)) is not None:
                wrong.append(f"{name}: {problem}")
    assert found > 40
    assert wrong == []


@pytest.mark.parametrize("words, bad", [
    (["cloud", "merchant", "add"], False), (["sync", "retry-quarantined"], False),
    (["cloud", "dgi", "statuz"], True), (["credentials", "status"], True),
])
def test_the_command_check_can_fail(words, bad):
    assert (_resolve(words) is not None) is bad
    assert _commands(f"run `stalela {' '.join(words)} --data x` as `sudo -u stalela stalela …`") == [words]
