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


def test_bench_runs_and_writes_json(tmp_path, capsys):
    """`slimkernels bench` end to end on one tiny shape: ours and the CPU anchors, table and JSON."""
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--device", "cpu", "--shapes", "64x48", "--m", "1,3", "--quick", "--budget", "0.02",
                     "--no-progress", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "int8_scaled_mm_packed on cpu: N=64 K=48" in text and "QuantLinear on cpu" in text
    rows = json.loads(out.read_text())["rows"]
    names = {r["name"] for r in rows}
    assert {"ours:native", "fp32 F.linear", "fbgemm dyn int8", "w8a8:native", "w8a16:native", "codebook:native"} <= names
    assert "QuantLinear (low-bit) on cpu" in text
    assert all(r["status"] in ("ok", "skipped") for r in rows), [r for r in rows if r["status"] == "error"]
