"""The command line: --version, info, demo on a tiny setting, bench on one tiny shape per suite, and
the bench suite registry."""
from __future__ import annotations

import importlib
import json
import re

import pytest

import slimkernels
from slimkernels import cli, demo


@pytest.fixture
def fixed_bandwidth(monkeypatch):
    """Skip the copy-bandwidth probe (it copies 8x the last-level cache, seconds on a loaded machine):
    these tests are about the command and the suites, not the numbers."""
    from slimkernels.bench import cli as bench_cli

    monkeypatch.setattr(bench_cli, "measure_bandwidth", lambda device, quick=False: 10e9)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"slimkernels {slimkernels.__version__}"


@pytest.mark.parametrize("command", [[], ["info"], ["bench"], ["demo"]])
def test_help(command, capsys):
    """Every command prints its help (`slimkernels info --help` used to print the info instead), and
    no help text cites a document outside the repository."""
    with pytest.raises(SystemExit) as exc:
        cli.main(command + ["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: slimkernels" + (f" {command[0]}" if command else ""))
    assert "BENCHMARKING" not in text and "/work/" not in text and "shared notes" not in text
    for doc in re.findall(r"[\w./-]+\.md\b", text):
        assert doc == "bench/README.md", f"help cites {doc}"


def test_info(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu_extension"] is True and info["cpu_isa"] in ("avx512_vnni", "avx2", "scalar")


def test_demo_small(capsys, tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "demo.json"
    assert cli.main(["demo", "--epochs", "5", "--hidden", "64", "--cnn-width", "8", "--cnn-epochs", "3",
                     "--finetune-epochs", "1", "--dc-epochs", "2", "--no-progress", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int8 dynamic (W8A8)" in text and "W8A8 model gives identical outputs: True" in text
    assert "pruned CNN into a fresh full-width CNN gives identical outputs: True" in text
    result = json.loads(out.read_text())
    rows, cnn_rows, dc_rows = result["mlp"], result["cnn"], result["deep_compression"]
    assert [r["mode"] for r in rows] == list(demo.MODES)
    # 5 short epochs on digits are already far above chance (10%); one-shot pruning of this narrow a net
    # (64 wide) to 80% without fine-tuning loses a lot, but stays above chance.
    assert all(r["accuracy"] > (0.2 if r["mode"] in demo.PRUNING_MODES else 0.5) for r in rows)
    assert rows[1]["smaller"] > 2
    # Structured pruning: the stages in order, each pruned one 3x+ fewer MACs and fewer params.
    assert [r["stage"].split()[0] for r in cnn_rows] == ["float", "pruned", "+", "+"]
    assert all(r["fewer_macs"] > 3 and r["params"] < cnn_rows[0]["params"] / 2 for r in cnn_rows[1:])
    assert cnn_rows[0]["accuracy"] > 0.5 and cnn_rows[-1]["accuracy"] > 0.5
    # Deep Compression: every stage's file smaller than the one before (the Huffman stage losslessly).
    assert [r["stage"] for r in dc_rows] == ["float32", "pruned", "shared", "huffman"]
    assert dc_rows[-1]["file_bytes"] < dc_rows[-2]["file_bytes"] and dc_rows[-1]["accuracy"] == dc_rows[-2]["accuracy"]


def test_unknown_command():
    with pytest.raises(SystemExit):
        cli.main(["fly"])


def test_bench_runs_and_writes_json(tmp_path, capsys, fixed_bandwidth):
    """`slimkernels bench` end to end on one tiny shape: ours and the CPU anchors, table and JSON."""
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--device", "cpu", "--shapes", "64x48", "--m", "1,3", "--quick", "--budget", "0.02",
                     "--layers", "8", "--no-progress", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "int8_scaled_mm_packed on cpu: N=64 K=48" in text and "QuantLinear on cpu" in text
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert record["suites"] == ["int8_mm", "quant_linear", "lowbit"]  # the default suites
    names = {r["name"] for r in rows}
    assert {"ours:native", "fp32 F.linear", "fbgemm dyn int8", "w8a8:native", "w8a16:native", "codebook:native"} <= names
    assert "QuantLinear (low-bit) on cpu" in text
    assert all(r["status"] in ("ok", "skipped") for r in rows), [r for r in rows if r["status"] == "error"]


# ---- the suite registry ------------------------------------------------------------------------------
def _suite_names():
    from slimkernels.bench import registry

    return [s.name for s in registry.suites()] + ["weight_only"]  # and the old name of lowbit


@pytest.mark.parametrize("suite", _suite_names())
def test_bench_each_suite(suite, capsys, fixed_bandwidth):
    """A tiny run of every suite (and alias): it runs, prints its table, and no entry errors."""
    from slimkernels.bench import registry

    code = cli.main(["bench", "--device", "cpu", "--shapes", "64x64", "--m", "1", "--quick", "--suite", suite,
                     "--no-progress", "--budget", "0.01", "--layers", "2"])
    assert code == 0
    text = capsys.readouterr().out
    assert f"{registry.get(suite).op} on cpu" in text
    assert "error:" not in text, text


def test_bench_variants(tmp_path, fixed_bandwidth):
    """--isa, --amx, --act-dtype and --repeats add tagged rows and interleaved rounds."""
    out = tmp_path / "bench.json"
    from slimkernels import _native

    isas = [i for i in _native._C.supported_isas() if i != "scalar"]
    args = ["bench", "--device", "cpu", "--shapes", "128x128", "--m", "8", "--suite", "lowbit,dequant_int8",
            "--isa", ",".join(isas), "--amx", "off", "--act-dtype", "fp32,bf16", "--repeats", "3", "--budget", "0.03",
            "--layers", "2", "--no-progress", "--json", str(out)]
    assert cli.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    by = {(r["suite"], r["name"]): r for r in rows}
    assert by[("lowbit", "w4a16:native[amx-off]")]["status"] == "ok"
    assert by[("lowbit", "w4a16:native[amx-off,bf16]")]["status"] == "ok"
    assert ("lowbit", "w4a16:native") not in by  # only the AMX mode asked for
    assert by[("dequant_int8", "ours:native[bf16]")]["status"] == "ok"
    assert by[("dequant_int8", "bf16 nn.Linear")]["status"] == "ok"
    assert by[("dequant_int8", "torch w8a16[bf16]")]["status"] == "ok"
    if len(isas) > 1:
        assert by[("lowbit", f"w4a16:native[{isas[1]}]")]["status"] == "ok"
    assert all(len(r["rounds_us"]) == 3 for r in rows if r["status"] == "ok")
    assert all(r["status"] in ("ok", "skipped") for r in rows), [r for r in rows if r["status"] == "error"]


def test_suite_registry():
    """Every op family with kernels beyond the reference has a suite named after it; suites resolve by
    name and alias; an unknown suite is a clear error, in the API and on the command line."""
    from slimkernels import backends
    from slimkernels.bench import registry

    for family in backends.FAMILIES:
        module = importlib.import_module(f"slimkernels.ops.{family}")
        kernels = {impl for op in module.__all__ for device in ("cpu", "cuda")
                   for impl in backends.registered(op, device, usable=False)}
        if kernels - {"reference"}:
            suite = registry.get(family)
            assert suite.family == family
    assert registry.get("weight_only") is registry.get("lowbit")
    assert [s.name for s in registry.select("default")] == ["int8_mm", "quant_linear", "lowbit"]
    assert {s.name for s in registry.select("all")} >= set(backends.FAMILIES) | {"quant_linear"}
    with pytest.raises(ValueError, match="unknown bench suite 'nope'.*int8_mm"):
        registry.get("nope")
    # entries are known before any weight is built, with unique ids per case
    for suite in registry.suites():
        specs = suite.entries("cpu", 256, 256, 1)
        assert specs and len({s.id for s in specs}) == len(specs)
        assert {s.kind for s in specs} == {"ours", "anchor"}


def test_bench_bad_arguments(capsys):
    assert cli.main(["bench", "--device", "cpu", "--suite", "nope"]) == 2
    assert "unknown bench suite 'nope'" in capsys.readouterr().err
    assert cli.main(["bench", "--device", "cpu", "--amx", "sometimes"]) == 2
    assert "--amx" in capsys.readouterr().err
    assert cli.main(["bench", "--device", "cpu", "--shapes", "4096"]) == 2
    assert "--shapes" in capsys.readouterr().err
