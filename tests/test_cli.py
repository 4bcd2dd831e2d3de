"""The CLI on CPU: tables print, user errors are one line with exit code 2, check passes on CPU."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from gkabench.cli import app

runner = CliRunner()


def test_layers_table_lists_every_mixer(monkeypatch):
    import gkabench.cli as cli
    from rich.console import Console

    monkeypatch.setattr(cli, "console", Console(width=250))
    result = runner.invoke(app, ["layers", "--hidden", "256"])
    assert result.exit_code == 0, result.output
    for name in ("gka", "gated_deltanet", "gla", "mamba2", "mesanet", "attention"):
        assert name in result.output


def test_unknown_mixer_is_one_line_error():
    result = runner.invoke(app, ["layers", "--mixers", "gka,hyena"])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown mixer 'hyena'" in lines[0] and "valid names" in lines[0]


def test_check_on_cpu_passes_and_writes_json(tmp_path):
    out = tmp_path / "check.json"
    result = runner.invoke(app, ["check", "--ops", "gka,attention", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["rows"] and all(r["status"] == "pass" for r in data["rows"])
    assert data["environment"]["torch"]


def test_demo_runs_on_cpu_subset():
    result = runner.invoke(app, ["demo", "--mixers", "gka,attention"])
    assert result.exit_code == 0, result.output
    assert "CPU" in result.output and "gka" in result.output
