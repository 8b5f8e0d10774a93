"""The command line: info, and the demo on a tiny setting (the real default runs in the README)."""
from __future__ import annotations

import json

import pytest

from slimkernels import cli, demo


def test_info(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu_extension"] is True and info["cpu_isa"] in ("avx512_vnni", "avx2", "scalar")


def test_demo_small(capsys, tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "demo.json"
    assert cli.main(["demo", "--epochs", "5", "--hidden", "64", "--no-progress", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int8 dynamic (W8A8)" in text and "identical outputs: True" in text
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == list(demo.MODES)
    assert all(r["accuracy"] > 0.5 for r in rows)  # 5 short epochs on digits are already far above chance (10%)
    assert rows[1]["smaller"] > 2


def test_unknown_command():
    with pytest.raises(SystemExit):
        cli.main(["fly"])
