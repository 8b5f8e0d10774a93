"""`slimkernels report FILE [--plot out.png] [--json]` on checkpoints compressed by the passes, with and
without the compression info `slimkernels compress` saves, Huffman-coded or not; and on bad files."""
from __future__ import annotations

import json
import os
import pickle
import random
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import slimkernels
from slimkernels import cli, report_cmd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "compress"))
from test_save_info import INFO, compressed_mlp  # noqa: E402  (the model with one layer per format)

CANDIDATES = [
    {"label": "uniform w8a16", "bytes": 30000, "quality": 0.999, "latency_ms": 0.31, "chosen": False},
    {"label": "uniform w4a16 g32", "bytes": 17000, "quality": 0.981, "latency_ms": 0.27, "chosen": False},
    {"label": "uniform 2:4", "bytes": 33000, "quality": 0.93, "latency_ms": None, "chosen": False},
    {"label": "uniform rank 1/4", "bytes": 12000, "quality": 0.71, "latency_ms": 0.12, "chosen": False},
]


def report(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["report", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def layer_bytes(path) -> dict:
    """{layer: bytes of its tensors in the file} (tensor names up to their last dot; an unknown tensor fails)."""
    sizes = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            layer = name.split(".")[0]
            sizes[layer] = sizes.get(layer, 0) + t.numel() * t.element_size()
    return sizes


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same compressed model saved plain without info, with info, and Huffman-coded with info."""
    folder = tmp_path_factory.mktemp("report")
    model = compressed_mlp(seed=5)
    paths = {"plain": folder / "plain.safetensors", "info": folder / "info.safetensors",
             "huffman": folder / "huffman.safetensors"}
    info = {**INFO, "candidates": CANDIDATES}
    slimkernels.save(model, paths["plain"])
    slimkernels.save(model, paths["info"], info=info)
    slimkernels.save(model, paths["huffman"], entropy_coding="huffman", info=info)
    return paths


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: slimkernels report")


@pytest.mark.parametrize("which", ["plain", "info"])
def test_text_has_every_layer_and_its_bytes(files, capsys, which):
    path = files[which]
    code, out, err = report(capsys, path)
    assert code == 0 and err == ""
    lines = {line.split()[0]: line for line in out.splitlines() if line[:1].isdigit()}
    formats = {"0": "w4a16 g32 asym", "2": "2:4 fp32", "4": "rank 5", "6": "hashed 1/8", "7": "float"}
    assert set(lines) == set(formats)
    for layer, nbytes in layer_bytes(path).items():
        assert f" {nbytes:,} " in lines[layer] and formats[layer] in lines[layer]
    assert f"file {os.path.getsize(path):,} bytes" in out
    if which == "plain":
        assert report_cmd.NOT_RECORDED in out and "error" not in out.splitlines()[2]
    else:
        assert "0.0123" in lines["0"]  # the error recorded for layer 0
        assert "written by slimkernels compress" in out and "configurations tried: 4" in out
        assert "float 123,456 bytes (recorded at compression)" in out


def test_huffman_file_reports_its_coded_bytes(files, capsys):
    code, out, _ = report(capsys, files["huffman"], "--json")
    assert code == 0
    data = json.loads(out)
    assert data["entropy_coding"] == "huffman"
    with safe_open(str(files["huffman"]), framework="pt") as f:
        stored = sum(f.get_tensor(n).numel() * f.get_tensor(n).element_size() for n in f.keys())
    assert sum(row["bytes"] for row in data["layers"]) == stored  # the coded streams are split among the layers
    plain = json.loads(report(capsys, files["info"], "--json")[1])
    assert sum(row["bytes"] for row in data["layers"]) < sum(row["bytes"] for row in plain["layers"])
    assert "entropy coding: huffman" in report(capsys, files["huffman"])[1]


def test_json(files, capsys):
    code, out, _ = report(capsys, files["info"], "--json")
    assert code == 0
    data = json.loads(out)
    assert data["info"] == {**INFO, "candidates": CANDIDATES}
    assert data["file_bytes"] == os.path.getsize(files["info"])
    rows = {row["name"]: row for row in data["layers"]}
    assert {name: row["bytes"] for name, row in rows.items()} == layer_bytes(files["info"])
    assert rows["0"]["error"] == 0.0123 and rows["2"]["error"] is None
    plain = json.loads(report(capsys, files["plain"], "--json")[1])
    assert plain["info"] == {} and plain["float_bytes"] == sum(row["float_bytes"] for row in plain["layers"])


def test_plot_writes_a_png(files, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    out_png = tmp_path / "tradeoff.png"
    code, out, _ = report(capsys, files["info"], "--plot", out_png)
    assert code == 0 and f"plot: {out_png}" in out
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000


def test_plot_without_matplotlib_says_how_to_get_it(files, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import raises ImportError
    code, _, err = report(capsys, files["info"], "--plot", tmp_path / "x.png")
    assert code == 2 and "pip install slimkernels[plot]" in err


def test_plot_needs_recorded_configurations(files, capsys, tmp_path):
    code, _, err = report(capsys, files["plain"], "--plot", tmp_path / "x.png")
    assert code == 2 and "nothing to plot" in err and not (tmp_path / "x.png").exists()


def test_pareto_front_matches_its_definition():
    rng = random.Random(7)
    for _ in range(50):
        points = [{"bytes": rng.randint(1, 30), "quality": round(rng.random(), 1)} for _ in range(rng.randint(1, 12))]
        dominated = [p for p in points if any(q["bytes"] <= p["bytes"] and q["quality"] >= p["quality"]
                                              and (q["bytes"], q["quality"]) != (p["bytes"], p["quality"])
                                              for q in points)]
        expected = sorted({(p["bytes"], p["quality"]) for p in points if p not in dominated})
        assert [(p["bytes"], p["quality"]) for p in report_cmd.pareto_front(points)] == expected


def one_line_error(capsys, path, fragment):
    code, out, err = report(capsys, path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and fragment in err, err


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    one_line_error(capsys, tmp_path / "missing.safetensors", "no such file")
    one_line_error(capsys, tmp_path, "not a file")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.randn(4, 3)}, str(foreign))
    one_line_error(capsys, foreign, "not a slimkernels checkpoint")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(random.Random(3).randrange(256) for _ in range(500)))
    one_line_error(capsys, noise, "not a readable safetensors file")


class _Trap:
    """Unpickling this writes a file: the report must never unpickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_is_never_unpickled(tmp_path, capsys):
    marker, path = tmp_path / "unpickled", tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(_Trap(str(marker))))
    one_line_error(capsys, path, "not a readable safetensors file")
    torch.save({"w": torch.randn(3)}, tmp_path / "torch.pt")
    one_line_error(capsys, tmp_path / "torch.pt", "not a readable safetensors file")
    assert not marker.exists()


@pytest.mark.parametrize("info, fragment", [
    ({"tool": "x", "candidates": [{"label": "a", "quality": 0.9}]}, "candidates[0] lacks a positive 'bytes'"),
    ({"tool": "x", "candidates": {"a": 1}}, "'candidates' is a dict"),
    ({"tool": "x", "layers": [1, 2]}, "'layers' is a list"),
])
def test_corrupt_info_is_a_one_line_error(tmp_path, capsys, info, fragment):
    path = tmp_path / "m.safetensors"
    slimkernels.save(compressed_mlp(), path, info=info)
    code, _, err = report(capsys, path, "--plot", tmp_path / "x.png")
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
