"""Configuration: validated ranges, STALELA_<SECTION>__<KEY> overrides, one source of defaults,
and `stalela config check`."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tomllib

import pytest
from click.testing import CliRunner

from agent.cli.main import cli
from agent.config import (ATTRIBUTES, AgentConfig, ConfigError, Settings, default_toml, load_config,
                          write_default_config)
from tests.support import ROOT, python_path


def stalela(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=python_path(), **(env or {})), timeout=60)


def edit(folder, old, new):
    path = folder / "config.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("old,new,named", [
    ("interval = 5.0", "interval = -1.0", "sync.interval"),
    ("interval = 5.0", "interval = 0", "sync.interval"),
    ("block_size = 500", "block_size = -5", "credential.block_size"),
    ("port = 8720", "port = 99999", "agent.port"),
    ('process = "auto"', 'process = "sometimes"', "sealing.process"),
    ('z_time = "23:59"', 'z_time = "25:00"', "reports.z_time"),
    ('policy = ["device", "cloud", "delegated"]', 'policy = []', "signer.policy"),
    ('policy = ["device", "cloud", "delegated"]', 'policy = ["cloud", "cloud"]', "signer.policy"),
])
def test_out_of_range_values_are_refused_by_name(tmp_path, old, new, named):
    write_default_config(tmp_path)
    edit(tmp_path, old, new)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert named in str(caught.value)
    result = CliRunner().invoke(cli, ["config", "check", "--data", str(tmp_path)])
    assert result.exit_code == 1 and named in result.output and "Traceback" not in result.output


def test_a_port_out_of_range_stops_the_agent_with_one_line(harness):
    edit(harness.data_dir, f"port = {harness.port}", "port = 99999")
    res = stalela("agent", "run", "--data", str(harness.data_dir))
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "agent.port" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_negative_interval_never_reaches_the_daemon(harness):
    # It used to make the sync loop spin; now the agent refuses to start, naming the key.
    edit(harness.data_dir, "interval = 5.0", "interval = -1.0")
    res = stalela("agent", "run", "--data", str(harness.data_dir))
    assert res.returncode == 1 and "sync.interval" in res.stderr and "Traceback" not in res.stderr


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    write_default_config(tmp_path, sync__interval=2.5, credential__block_size=300)
    monkeypatch.setenv("STALELA_SYNC__INTERVAL", "7")
    monkeypatch.setenv("STALELA_SIGNER__POLICY", '["cloud", "delegated"]')
    config = load_config(tmp_path)
    assert config.sync_interval == 7.0 and config.block_size == 300
    assert config.signer_policy == ("cloud", "delegated")
    monkeypatch.setenv("STALELA_SYNC__INTERVAL", "-3")
    with pytest.raises(ConfigError, match="sync.interval"):
        load_config(tmp_path)
    monkeypatch.delenv("STALELA_SYNC__INTERVAL")
    monkeypatch.setenv("STALELA_SYNC__INTERVALL", "3")  # a typo is refused, not ignored
    with pytest.raises(ConfigError, match="sync.intervall"):
        load_config(tmp_path)


def test_config_check_shows_value_and_origin_in_a_subprocess(tmp_path):
    write_default_config(tmp_path, credential__block_size=300)
    res = stalela("config", "check", "--data", str(tmp_path), "--json", env={"STALELA_SYNC__INTERVAL": "9"})
    assert res.returncode == 0, res.stderr
    rows = {r["key"]: r for r in json.loads(res.stdout)["settings"]}
    assert rows["sync.interval"] == {"key": "sync.interval", "value": 9.0, "origin": "env STALELA_SYNC__INTERVAL"}
    assert rows["credential.block_size"]["value"] == 300
    # The file as written by init names every key: each comes from the file unless the env says otherwise.
    assert rows["agent.port"] == {"key": "agent.port", "value": 8720, "origin": "file"}
    text = stalela("config", "check", "--data", str(tmp_path), env={"STALELA_SYNC__INTERVAL": "9"})
    line = next(line for line in text.stdout.splitlines() if "sync.interval" in line)
    assert "9.0" in line and "env STALELA_SYNC__INTERVAL" in line
    bad = stalela("config", "check", "--data", str(tmp_path), env={"STALELA_CREDENTIAL__BLOCK_SIZE": "-1"})
    assert bad.returncode == 1 and "credential.block_size" in bad.stderr and "Traceback" not in bad.stderr


def test_config_check_prints_no_secret(tmp_path):
    write_default_config(tmp_path, cloud__url="https://box:s3cret-pass@cloud.example.cd")
    res = stalela("config", "check", "--data", str(tmp_path))
    assert res.returncode == 0 and "s3cret-pass" not in res.stdout and "cloud.example.cd" in res.stdout


def test_config_check_origin_file_and_default(tmp_path):
    (tmp_path / "config.toml").write_text("[sync]\ninterval = 3.0\n")
    rows = {r["key"]: r for r in json.loads(
        CliRunner().invoke(cli, ["config", "check", "--data", str(tmp_path), "--json"]).output)["settings"]}
    assert rows["sync.interval"]["origin"] == "file" and rows["sync.batch_size"]["origin"] == "default"


def test_one_source_of_defaults():
    model = Settings.model_construct()
    written = tomllib.loads(default_toml())
    for (section, key), attr in ATTRIBUTES.items():
        default = getattr(getattr(model, section), key)
        assert written[section][key] == default, (section, key)
        field = next(f for f in dataclasses.fields(AgentConfig) if f.name == attr)
        assert field.default == (tuple(default) if isinstance(default, list) else default), attr
    # The CLI's own defaults come from the same model.
    init = {p.name: p.default for p in cli.get_command(None, "agent").commands["init"].params}
    assert init["cloud_url"] == model.cloud.url and init["port"] == model.agent.port


def test_plain_http_to_another_machine_is_refused_unless_allowed(tmp_path):
    result = CliRunner().invoke(cli, ["agent", "init", "--data", str(tmp_path / "a"),
                                      "--cloud", "http://cloud.example.cd"])
    assert result.exit_code == 1 and "allow_insecure_http" in result.output
    assert not (tmp_path / "a" / "config.toml").exists()
    result = CliRunner().invoke(cli, ["agent", "init", "--data", str(tmp_path / "b"),
                                      "--cloud", "http://cloud.example.cd", "--allow-insecure-http"])
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "b").cloud_url == "http://cloud.example.cd"
    for ok in ("https://cloud.example.cd", "http://127.0.0.1:8710", "http://localhost:8710", "http://[::1]:8710"):
        write_default_config(tmp_path / "c", cloud__url=ok)
        assert load_config(tmp_path / "c").cloud_url == ok
    write_default_config(tmp_path / "d")
    edit(tmp_path / "d", 'url = "http://127.0.0.1:8710"', 'url = "http://10.0.0.5:8710"')
    with pytest.raises(ConfigError, match="plain http"):
        load_config(tmp_path / "d")
