"""`slimkernels compress`: a factory model end to end by a recipe (the file restores with slimkernels.load),
the budget parser, bad input (exit code 2, one line, no traceback), and MiniLM when its weights are here."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkernels
from slimkernels import cli
from slimkernels.compress_cmd import CommandError, parse_budget
from slimkernels.nn import HashedLinear, QuantLinear

HERE = Path(__file__).resolve().parent
FACTORY = "test_compress_cmd:factory"
pytestmark = pytest.mark.filterwarnings("ignore:.*calibration data too thin")  # 40 rows on purpose: fast


def factory() -> nn.Module:
    """The model the command compresses (imported by name: the test puts this folder on sys.path)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 64), nn.GELU(), nn.Linear(64, 7))


def not_a_module():
    return "model"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp_path as the current directory, this folder importable, a calibration file and a recipe."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    from safetensors.torch import save_file

    save_file({"input": torch.randn(40, 48, generator=torch.Generator().manual_seed(2))}, "cal.safetensors")
    (tmp_path / "recipe.toml").write_text("""
[[rule]]
pattern = "4"
[[rule]]
pattern = "0"
quantize = { mode = "w8a8" }
[[rule]]
pattern = "*"
quantize = { mode = "w4a16", group_size = 32, method = "gptq" }
""")
    return tmp_path


def compress(*args: str) -> int:
    return cli.main(["compress", *args])


def test_recipe_end_to_end_on_a_factory_model(workdir, capsys):
    code = compress(FACTORY, "--recipe", "recipe.toml", "--calibration", "cal.safetensors", "--out", "m.safetensors",
                    "--no-progress")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Int8DynamicConfig (w8a8)" in out and "w4a16 g32 asym gptq" in out
    assert "wrote m.safetensors" in out and "x smaller" in out and "min cosine" in out
    restored = slimkernels.load("m.safetensors", factory())
    assert isinstance(restored[0], QuantLinear) and restored[0].mode == "w8a8"
    assert isinstance(restored[2], QuantLinear) and restored[2].mode == "w4a16"
    assert type(restored[4]) is nn.Linear
    x = torch.randn(9, 48)
    with torch.no_grad():
        assert float(F.cosine_similarity(restored(x), factory()(x)).min()) > 0.95
    read_info = getattr(slimkernels.compress.serialization, "read_info", None)
    if read_info is not None:
        info = read_info("m.safetensors")
        assert info["tool"] == "slimkernels compress" and info["model"] == FACTORY
        assert info["recipe"]["rule"][1] == {"pattern": "0", "quantize": {"mode": "w8a8"}}
        assert sorted(info["layers"]) == ["0", "2"]
        assert info["layers"]["2"]["float_bytes"] > info["layers"]["2"]["bytes"] > 0
        assert 0.9 < info["chosen"]["quality"] <= 1.0001 and info["candidates"][0]["chosen"]


def test_entropy_coded_file_loads(workdir, capsys):
    assert compress(FACTORY, "--recipe", "recipe.toml", "--calibration", "cal.safetensors", "--out", "h.safetensors",
                    "--no-progress", "--entropy-coding", "huffman") == 0
    capsys.readouterr()
    restored = slimkernels.load("h.safetensors", factory())
    assert isinstance(restored[2], QuantLinear)


def test_distill_step_uses_the_float_model_as_teacher(workdir, capsys):
    (workdir / "hash.toml").write_text('[[rule]]\npattern = "[02]"\nhash = { compression = 0.25 }\n'
                                       'distill = { steps = 3, lr = 1e-3, hidden = "mse" }\n')
    assert compress(FACTORY, "--recipe", "hash.toml", "--calibration", "cal.safetensors", "--out", "d.safetensors",
                    "--no-progress") == 0
    capsys.readouterr()
    restored = slimkernels.load("d.safetensors", factory())
    assert isinstance(restored[0], HashedLinear) and isinstance(restored[2], HashedLinear)


def test_budget_end_to_end_on_a_factory_model(workdir, capsys):
    pytest.importorskip("slimkernels.compress.budget")
    code = compress(FACTORY, "--budget", "size=1/4", "--calibration", "cal.safetensors", "--out", "b.safetensors",
                    "--no-progress")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "budget:" in out and "wrote b.safetensors" in out
    slimkernels.load("b.safetensors", factory())


@pytest.mark.parametrize("spec, expected", [
    ("size=1/6", {"size": 1 / 6, "latency": None}),
    ("size=0.2,latency=0.5", {"size": 0.2, "latency": 0.5}),
    ("latency = 1/2", {"size": None, "latency": 0.5}),
    ("size=4MB", {"size": 4_000_000, "latency": None}),
    ("size=300KiB", {"size": 300 * 1024, "latency": None}),
])
def test_parse_budget(spec, expected):
    assert parse_budget(spec) == pytest.approx(expected)


@pytest.mark.parametrize("spec", ["size=2", "size=0", "size=1/0", "speed=0.5", "size", "", "size=0.2,size=0.3",
                                  "latency=4MB", "size=xMB"])
def test_parse_budget_rejects(spec):
    with pytest.raises(CommandError, match="--budget"):
        parse_budget(spec)


BAD = [
    (["no/such/folder", "--recipe", "recipe.toml", "--out", "o.safetensors"], "neither a folder nor"),
    (["no_such_module_xyz:make", "--recipe", "recipe.toml", "--out", "o.safetensors"], "cannot import the factory"),
    (["test_compress_cmd:missing", "--recipe", "recipe.toml", "--out", "o.safetensors"], "cannot import the factory"),
    (["test_compress_cmd:not_a_module", "--recipe", "recipe.toml", "--out", "o.safetensors"], "not an nn.Module"),
    ([FACTORY, "--recipe", "recipe.toml", "--out", "o.safetensors", "--bogus"], "unrecognized arguments: --bogus"),
    ([FACTORY, "--recipe", "recipe.toml"], "--out"),
    ([FACTORY, "--out", "o.safetensors"], "one of the arguments --recipe --budget is required"),
    ([FACTORY, "--recipe", "recipe.toml", "--budget", "size=0.5", "--out", "o"], "not allowed with"),
    ([FACTORY, "--recipe", "missing.toml", "--out", "o.safetensors"], "no such file"),
    ([FACTORY, "--recipe", "unknown_pass.toml", "--out", "o.safetensors"], "unknown pass 'quantise'"),
    ([FACTORY, "--recipe", "no_match.toml", "--out", "o.safetensors"], "matches no layer"),
    ([FACTORY, "--recipe", "recipe.toml", "--calibration", "cal.pt", "--out", "o.safetensors"], ".safetensors"),
    ([FACTORY, "--recipe", "recipe.toml", "--calibration", "other.safetensors", "--out", "o"],
     "no tensor named 'input'"),
    ([FACTORY, "--recipe", "recipe.toml", "--out", "o.safetensors"], "needs calibration data"),  # gptq, no data
    ([FACTORY, "--recipe", "recipe.toml", "--samples", "0", "--out", "o.safetensors"], "--samples"),
    ([FACTORY, "--budget", "size=3", "--calibration", "cal.safetensors", "--out", "o"], "--budget size"),
    ([FACTORY, "--recipe", "distill.toml", "--out", "o.safetensors"], "give --calibration"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_exits_2_with_one_line(workdir, capsys, args, message):
    from safetensors.torch import save_file

    (workdir / "unknown_pass.toml").write_text('[[rule]]\npattern = "*"\nquantise = { mode = "w8a8" }\n')
    (workdir / "no_match.toml").write_text('[[rule]]\npattern = "*.attention.*"\nquantize = { mode = "w8a8" }\n')
    (workdir / "distill.toml").write_text('[[rule]]\npattern = "*"\ndistill = { steps = 2 }\n')
    (workdir / "cal.pt").write_bytes(b"not read")
    save_file({"x": torch.randn(4, 48)}, "other.safetensors")
    assert compress(*args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("slimkernels compress: error: ") and message in err, err
    assert "Traceback" not in captured.err + captured.out
    assert not (workdir / "o.safetensors").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        compress("--help")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: slimkernels compress") and "--recipe" in text and "--budget" in text


@pytest.mark.slow
def test_minilm_folder_end_to_end(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(HERE / "models"))
    try:
        import minilm_data as md
    finally:
        sys.path.remove(str(HERE / "models"))
    if md.missing():
        pytest.skip(md.missing())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.toml").write_text('[[rule]]\npattern = "pooler.*"\n[[rule]]\npattern = "*"\n'
                                          'quantize = { mode = "w8a8" }\n')
    (tmp_path / "text.txt").write_text("\n".join(md.CALIBRATION_SENTENCES[:12]) + "\n\n", encoding="utf-8")
    code = compress(str(md.model_dir()), "--recipe", "recipe.toml", "--calibration", "text.txt", "--samples", "12",
                    "--out", "minilm.safetensors", "--no-progress")
    out = capsys.readouterr().out
    assert code == 0, out
    cos = float(out.rsplit("held-out calibration samples: ", 1)[1].split()[0])
    assert cos > 0.9, out
    float_model, tokenizer = md.load()
    model = slimkernels.load("minilm.safetensors", copy.deepcopy(float_model))
    assert isinstance(model.encoder.layer[0].attention.self.query, QuantLinear)
    assert type(model.pooler.dense) is nn.Linear
    sentences = md.CALIBRATION_SENTENCES[12:16]
    assert float(F.cosine_similarity(md.encode(model, tokenizer, sentences),
                                     md.encode(float_model, tokenizer, sentences)).min()) > 0.9
