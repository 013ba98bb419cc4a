"""Pieces shared by the agent's and the cloud's configuration (pydantic-settings models with
[section] tables, environment overrides named PREFIX<SECTION>__<KEY>, a TOML template).

Each program keeps its own model and sources; what is here is what they would otherwise both
write the same way: naming a validation problem as the operator wrote it, hiding a password in a
URL, rendering a TOML value, and finding which section.key an environment variable sets.
"""
from __future__ import annotations

import os
from typing import Any, Callable, ClassVar, Iterable
from urllib.parse import urlsplit

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


def sectioned(env_prefix: str) -> SettingsConfigDict:
    """The model config both services' settings use: TOML-like sections, overridden from the
    environment as `<PREFIX><SECTION>__<KEY>`, unknown keys refused, names case-insensitive."""
    return SettingsConfigDict(env_prefix=env_prefix, env_nested_delimiter="__", extra="forbid",
                              case_sensitive=False)


class SourcesInOrder(BaseSettings):
    """Settings read from an ordered tuple of sources, strongest first (`SOURCES` names them:
    "init" — the values given to the constructor —, "env"). The agent passes its file as init
    values and lets the environment win; the cloud passes its command line as init values."""

    SOURCES: ClassVar[tuple[str, ...]] = ("init", "env")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        named = {"init": init_settings, "env": env_settings}
        return tuple(named[name] for name in cls.SOURCES)


def commented_toml(header: list[str], sections: dict[str, Any], render: Callable[[Any], str]) -> str:
    """A TOML file with every key of every section at its default, each preceded by its
    description as comments (`config template`, the agent's first config.toml)."""
    lines = list(header)
    for section, model in sections.items():
        lines += ["", f"[{section}]"]
        for key, info in model.model_fields.items():
            lines += [f"# {comment}" for comment in (info.description or "").splitlines()]
            lines.append(f"{key} = {render(info.default)}")
    return "\n".join(lines) + "\n"


def mask_url(url: str) -> str:
    """The URL with its password (if any) shown as ***: for logs, errors and `config check`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # a port that is not a number: nothing safe to keep but the scheme
        return url.split(":", 1)[0] + "://***" if "@" in url else url
    if password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def toml_value(value: object) -> str:
    """A Python value as TOML writes it (strings quoted, booleans lower case, lists inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def problem_lines(exc: ValidationError, hidden: Iterable[str] = ()) -> list[str]:
    """One line per problem, named section.key as in the file and the environment. The value
    given is quoted back, except for tables and for the keys in `hidden` (they may hold secrets)."""
    hidden = set(hidden)
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        name = ".".join(loc[:2]) or "configuration"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {name}" if len(loc) > 1 else f"unknown section [{name}]")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, (dict, list)) or name in hidden else f" (got {value!r})"
        problems.append(f"{name}: {msg}{shown}")
    return problems


def env_keys(prefix: str) -> dict[tuple[str, str], str]:
    """(section, key) -> the environment variable PREFIX<SECTION>__<KEY> that sets it."""
    found = {}
    for name in os.environ:
        upper = name.upper()
        if upper.startswith(prefix) and "__" in upper:
            section, _, key = upper[len(prefix):].partition("__")
            found[(section.lower(), key.lower())] = name
    return found


def section_models(settings_cls: Any) -> dict[str, Any]:
    """{section name: its model} of a settings class whose fields are all sections."""
    return {name: info.annotation for name, info in settings_cls.model_fields.items()}
