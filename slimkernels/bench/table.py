"""Rows (one dict per timed or skipped entry of a case) -> the printed table, and the JSON record."""
from __future__ import annotations

import datetime
import json
from typing import Optional


def fmt_time(us: Optional[float]) -> str:
    if us is None:
        return "-"
    if us < 1000:
        return f"{us:.1f} us"
    if us < 1e6:
        return f"{us / 1e3:.2f} ms"
    return f"{us / 1e6:.2f} s"


def _render(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body]


def short(name: str) -> str:
    """Column label: 'ours:native' -> 'native', 'w8a8:native' -> 'w8a8', 'w8a8:native[avx2]' ->
    'w8a8[avx2]', 'fp32 F.linear' -> 'fp32', 'ours:native[avx2]' -> 'native[avx2]'."""
    if name.startswith("ours:"):
        return name[5:]
    tag = name[name.index("["):] if name.endswith("]") else ""
    return name.split(":")[0].split(" ")[0] + tag


def _title(r: dict, bandwidth: Optional[dict]) -> str:
    device, n, k, layers = r["device"], r["N"], r["K"], r["layers"]
    bw = f", copy {bandwidth[device] / 1e9:.1f} GB/s" if bandwidth and device in bandwidth else ""
    if not layers:  # a suite without weights (x only)
        return f"\n{r['op']} on {device}: K={k}  (x [M, K] only, in cache{bw}); per call"
    return (f"\n{r['op']} on {device}: N={n} K={k}  ({layers} layers, "
            f"{layers * n * k / 1e6:.0f} MB int8{bw}); per layer")


def format_table(rows: list[dict], bandwidth: Optional[dict] = None) -> str:
    """One block per (suite, device, N, K): a line per M with each time, speed-ups and the floor.

    Speed-up columns ('<ours> vs <anchor>') are anchor_time / our_time (> 1: ours is faster). 'floor' is the memory-bound
    floor of the first 'ours' entry (bytes / copy bandwidth); 'x floor' is time / floor (1.0 = at the
    memory floor; larger = that many times slower than moving the bytes). A '*' marks a time taken
    without CUDA-graph replay in a case where other entries were replayed.
    """
    out: list[str] = []
    notes: dict[str, str] = {}
    blocks: dict[tuple, list[dict]] = {}
    for r in rows:
        blocks.setdefault((r["suite"], r["device"], r["N"], r["K"]), []).append(r)
    for brows in blocks.values():
        names: list[str] = []
        kinds: dict[str, str] = {}
        for r in brows:
            if r["name"] not in names:
                names.append(r["name"])
                kinds[r["name"]] = r["kind"]
        ours = [nm for nm in names if kinds[nm] == "ours"]
        anchors = [nm for nm in names if kinds[nm] == "anchor"]
        out.append(_title(brows[0], bandwidth))
        header = (["M"] + names + [f"{short(o)} vs {short(a)}" for o in ours for a in anchors] + ["floor"]
                  + [f"{short(o)} x floor" for o in ours])
        body = []
        for m in sorted({r["M"] for r in brows}):
            by = {r["name"]: r for r in brows if r["M"] == m}
            graphed = any("graph_us" in r for r in by.values())
            cells = [str(m)]
            for nm in names:
                r = by.get(nm)
                if r is None:
                    cells.append("")
                elif r["status"] == "ok":
                    cells.append(fmt_time(r["time_us"]) + ("*" if graphed and "graph_us" not in r else ""))
                else:
                    tag = "skip" if r["status"] == "skipped" else "error"
                    cells.append(tag)
                    notes.setdefault(f"{nm}: {r['reason']}", tag)
            for o in ours:
                for a in anchors:
                    ro, ra = by.get(o), by.get(a)
                    ok = ro and ra and ro["status"] == ra["status"] == "ok"
                    cells.append(f"{ra['time_us'] / ro['time_us']:.2f}x" if ok else "-")
            first = next((by[o] for o in ours if o in by and by[o]["status"] == "ok"), None)
            cells.append(fmt_time(first["floor_us"]) if first else "-")
            for o in ours:
                r = by.get(o)
                cells.append(f"{r['x_floor']:.2f}" if r and r["status"] == "ok" else "-")
            body.append(cells)
        out.extend(_render(header, body))
    if notes:
        out.append("")
        out.extend(f"  {tag}: {text}" for text, tag in notes.items())
    return "\n".join(out)


def write_json(path: str, env: dict, command: str, rows: list[dict], **fields) -> None:
    """Every row plus the environment, the date and the command line, as one JSON object."""
    record = {**env, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": command, **fields, "rows": rows}
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
