"""`slimkernels report FILE [--plot out.png] [--json]`: what a checkpoint written by slimkernels.save holds.

Per layer its format, stored bytes and the float bytes it replaces, read from the file's header (no model is
built, no tensor is read, nothing is unpickled); from the compression info that `slimkernels compress` saves
with the file (slimkernels.read_info) the error and latency it measured per layer, and the quality and size
of every configuration it tried. `--plot` draws those as size vs quality (colour: latency), with the Pareto
front and the chosen point (matplotlib: `pip install slimkernels[plot]`).

Bad input (a missing file, a file that is not a slimkernels checkpoint, corrupt metadata) ends with one
line on stderr and exit code 2, no traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .compress.serialization import inspect_checkpoint, read_info

PROG = "slimkernels report"
NOT_RECORDED = ("accuracy and speed were not recorded: the file was saved without compression info "
                "(`slimkernels compress` records them; slimkernels.save(..., info=) stores them)")


class CommandError(Exception):
    """Bad input to the command: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print the usage and exit; we want one line
        raise CommandError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Per-layer format, bytes, and the error and latency recorded at "
                                            "compression, of a file written by slimkernels.save / slimkernels compress.")
    parser.add_argument("file", metavar="FILE", help="a .safetensors checkpoint written by slimkernels")
    parser.add_argument("--plot", metavar="OUT.png",
                        help="draw size vs quality (colour: latency) of the configurations tried, the Pareto front "
                             "and the chosen one (needs matplotlib: pip install slimkernels[plot])")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


# ---- the report as data ---------------------------------------------------------------------------------------------
def _mapping(info: dict, key: str) -> dict:
    value = info.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"corrupt compression info: {key!r} is a {type(value).__name__}, expected a mapping")
    return value


def _number(value) -> float | None:
    """A recorded figure, or None when it was not recorded (or is not a number)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def build_report(path: str) -> dict:
    """The report of checkpoint `path` as a JSON-able dict: file, file_bytes, float_bytes (and where that figure
    comes from), ratio, entropy_coding, layers (inspect_checkpoint's rows with the recorded steps, error and
    latency_us added), and the compression info as saved."""
    layers, info = inspect_checkpoint(path), read_info(path)
    recorded = _mapping(info, "layers")
    for row in layers:
        entry = recorded.get(row["name"])
        entry = entry if isinstance(entry, dict) else {}
        row.update(steps=entry.get("steps"), error=_number(entry.get("error")),
                   latency_us=_number(entry.get("latency_us")))
    file_bytes = os.path.getsize(path)
    float_info = _mapping(info, "float")
    float_bytes = _number(float_info.get("bytes"))
    source = "recorded at compression"
    if float_bytes is None:
        float_bytes, source = sum(row["float_bytes"] for row in layers), "the shapes recorded in the checkpoint"
    coded = [row["name"] for row in layers if row["huffman"]]
    return {"file": path, "file_bytes": file_bytes, "float_bytes": int(float_bytes), "float_bytes_from": source,
            "ratio": float_bytes / file_bytes, "entropy_coding": "huffman" if coded else None,
            "layers": layers, "info": info}


# ---- text ---------------------------------------------------------------------------------------------------------
def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _figure(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_report(report: dict) -> str:
    from .demo import format_rows  # the project's one table formatter

    info, layers = report["info"], report["layers"]
    lines = [f"{report['file']}: {len(layers)} layers, {_size(report['file_bytes'])}"]
    if info:
        where = ", ".join(f"{key} {info[key]}" for key in ("model", "created") if isinstance(info.get(key), str))
        lines.append(f"written by {info.get('tool', 'an unknown tool')}" + (f" ({where})" if where else ""))
        for key in ("recipe", "budget"):
            if info.get(key) is not None:
                lines.append(f"{key}: {json.dumps(info[key])}")
    name_width = max([len(row["name"]) for row in layers] + [5]) + 2
    first_width = name_width + max([len(row["format"]) for row in layers] + [6]) + 2
    columns = [("layer".ljust(name_width) + "format", first_width, lambda r: r["name"].ljust(name_width) + r["format"]),
               ("bytes", 13, lambda r: f"{r['bytes']:,}"), ("float bytes", 14, lambda r: f"{r['float_bytes']:,}"),
               ("smaller", 9, lambda r: f"{r['float_bytes'] / r['bytes']:.2f}x" if r["bytes"] else "-")]
    measured = any(row["error"] is not None or row["latency_us"] is not None for row in layers)
    if measured:
        columns += [("error", 10, lambda r: _figure(r["error"], ".3g")),
                    ("latency", 12, lambda r: _figure(r["latency_us"], ".1f") + (" us" if r["latency_us"] is not None else ""))]
    lines += ["", format_rows(layers, columns), ""]
    lines.append(f"total: file {report['file_bytes']:,} bytes ({_size(report['file_bytes'])}), float "
                 f"{report['float_bytes']:,} bytes ({report['float_bytes_from']}): {report['ratio']:.2f}x smaller")
    if report["entropy_coding"]:
        coded = sum(row["huffman"] for row in layers)
        lines.append(f"entropy coding: {report['entropy_coding']} ({coded} of {len(layers)} layers' integer tensors)")
    if not info:
        lines.append(NOT_RECORDED)
        return "\n".join(lines)
    metric = info.get("quality_metric", "quality")
    for key in ("float", "chosen"):
        point = _mapping(info, key)
        if point:
            lines.append(f"{key}: {_point_words(point, metric)}")
    candidates = info.get("candidates") or []
    if candidates:
        lines.append(f"configurations tried: {len(candidates)} (`--plot out.png` draws them)")
    if not measured:
        lines.append("no per-layer error or latency was recorded")
    return "\n".join(lines)


def _point_words(point: dict, metric: str) -> str:
    words = [str(point["label"])] if "label" in point else []
    if _number(point.get("bytes")) is not None:
        words.append(_size(point["bytes"]))
    if _number(point.get("quality")) is not None:
        words.append(f"{metric} {point['quality']:.4f}")
    if _number(point.get("latency_ms")) is not None:
        words.append(f"latency {point['latency_ms']:.3f} ms")
    return ", ".join(words)


# ---- plot ---------------------------------------------------------------------------------------------------------
def plot_points(info: dict) -> list[dict]:
    """The configurations to draw: info["candidates"], then "chosen" and "float" when recorded; each
    {"label", "bytes", "quality", "latency_ms" (or None), "kind": "candidate" | "chosen" | "float"}."""
    points = []
    candidates = info.get("candidates", [])
    if not isinstance(candidates, list):
        raise ValueError(f"corrupt compression info: 'candidates' is a {type(candidates).__name__}, expected a list")
    entries = [(f"candidates[{i}]", c, "candidate") for i, c in enumerate(candidates)]
    entries += [(key, _mapping(info, key), key) for key in ("chosen", "float") if _mapping(info, key)]
    for where, entry, kind in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"corrupt compression info: {where} is not a mapping")
        size, quality = _number(entry.get("bytes")), _number(entry.get("quality"))
        if size is None or quality is None or size <= 0:
            raise ValueError(f"corrupt compression info: {where} lacks a positive 'bytes' or a numeric 'quality': "
                             f"{entry!r}")
        points.append({"label": str(entry.get("label", kind)), "bytes": size, "quality": quality,
                       "latency_ms": _number(entry.get("latency_ms")), "kind": kind})
    return points


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other beats on both size (smaller) and quality (higher), by size."""
    front = []
    for point in sorted(points, key=lambda p: (p["bytes"], -p["quality"])):
        if not front or point["quality"] > front[-1]["quality"]:
            front.append(point)
    return front


def _label_offsets(points: list[dict]) -> list[tuple[int, int, str]]:
    """(dx, dy, alignment) of each point's label: points close to an earlier one (within 4% of the size range
    on a log scale, 3% of the quality range) take the next of four positions around the point."""
    positions = [(6, 4, "left"), (6, -10, "left"), (-6, 4, "right"), (-6, -10, "right")]
    xs = [math.log(p["bytes"]) for p in points]
    ys = [p["quality"] for p in points]
    width, height = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    offsets = []
    for i in range(len(points)):
        near = sum(abs(xs[i] - xs[j]) < 0.04 * width and abs(ys[i] - ys[j]) < 0.03 * height for j in range(i))
        offsets.append(positions[near % len(positions)])
    return offsets


def draw(points: list[dict], out: str, metric: str = "quality") -> None:
    """Size (MB, log axis) vs quality of `points`, coloured by latency where recorded, the Pareto front as a
    step line, the chosen point starred, every point labelled; written as a PNG to `out`."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # no display, no pyplot global state
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise CommandError("--plot needs matplotlib: pip install slimkernels[plot]") from None
    fig = Figure(figsize=(9, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mb = [p["bytes"] / 1e6 for p in points]
    timed = [p for p in points if p["latency_ms"] is not None]
    untimed = [p for p in points if p["latency_ms"] is None]
    if timed:
        scatter = ax.scatter([p["bytes"] / 1e6 for p in timed], [p["quality"] for p in timed], s=60, zorder=3,
                             c=[p["latency_ms"] for p in timed], cmap="viridis", edgecolors="black", linewidths=0.5)
        fig.colorbar(scatter, ax=ax, label="latency (ms)")
    if untimed:
        ax.scatter([p["bytes"] / 1e6 for p in untimed], [p["quality"] for p in untimed], s=60, zorder=3,
                   facecolors="white", edgecolors="gray", label="latency not recorded")
    front = pareto_front(points)
    ax.step([p["bytes"] / 1e6 for p in front], [p["quality"] for p in front], where="post", color="tab:red",
            linewidth=1.2, zorder=2, label="Pareto front")
    chosen = [p for p in points if p["kind"] == "chosen"]
    for p in chosen:
        ax.scatter([p["bytes"] / 1e6], [p["quality"]], marker="*", s=320, facecolors="none",
                   edgecolors="tab:red", linewidths=1.8, zorder=4, label=f"chosen: {p['label']}")
    for p, (dx, dy, align) in zip(points, _label_offsets(points)):
        if p["kind"] == "candidate" and any((c["bytes"], c["quality"]) == (p["bytes"], p["quality"]) for c in chosen):
            continue  # the chosen point's own label names it
        ax.annotate(p["label"], (p["bytes"] / 1e6, p["quality"]), textcoords="offset points", xytext=(dx, dy),
                    ha=align, fontsize=7)
    if max(mb) / min(mb) > 4:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.01, not 10^-2
    ax.set_xlabel("size (MB)")
    ax.set_ylabel(metric)
    ax.set_title("size vs quality of the configurations tried")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, format="png")


# ---- the command --------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, out=print) -> None:
    path = args.file
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise CommandError(f"{path}: not a file")
    report = build_report(path)
    if args.plot:
        points = plot_points(report["info"])
        if not points:
            raise CommandError(f"{path}: nothing to plot: the file records no configurations with their size and "
                               "quality (it was saved without compression info)")
        draw(points, args.plot, str(report["info"].get("quality_metric", "quality")))
    if args.json:
        out(json.dumps(report, indent=1, default=str))
    else:
        out(format_report(report))
        if args.plot:
            out(f"plot: {args.plot}")


def main(argv: list[str]) -> int:
    """Exit codes: 0 done, 2 bad input (one line on stderr)."""
    try:
        run(_parser().parse_args(argv))
    except CommandError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # not a checkpoint, corrupt metadata, unreadable or unwritable file
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0
