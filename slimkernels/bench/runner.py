"""One case of one suite (device, N, K, M): build its entries on the weight stack, time them, and
return one row per entry (timed, skipped, or the error it raised)."""
from __future__ import annotations

import statistics
from typing import Optional

from .registry import Entry, EntrySpec, Options, Suite
from .stacks import Stack
from .timing import time_calls


def base_row(suite: Suite, spec: EntrySpec, stack: Stack, m: int) -> dict:
    return {"suite": suite.name, "op": suite.op, "device": stack.device, "N": stack.n, "K": stack.k, "M": m,
            "layers": stack.layers if suite.weights else 0, "name": spec.name, "id": spec.id, "kind": spec.kind}


def ok_row(row: dict, entry: Entry, timing: dict, bandwidth: float) -> dict:
    floor_us = entry.bytes / bandwidth * 1e6
    t = timing["time_us"]
    return {**row, "status": "ok", **timing, "bytes": entry.bytes, "ops": entry.ops, "floor_us": floor_us,
            "x_floor": t / floor_us, "gbps": entry.bytes / t / 1e3, "tops": entry.ops / t / 1e6}


def _error(row: dict, exc: Exception) -> dict:
    return {**row, "status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}


def run_case(suite: Suite, stack: Stack, m: int, bandwidth: float, budget_s: float, quick: bool,
             options: Optional[Options] = None, repeats: int = 1) -> list[dict]:
    """Time every entry of the case. repeats > 1: the entries are timed in turn, `repeats` rounds of
    budget_s / repeats each (noise from other jobs hits all of them alike); the time is the median of
    the rounds' medians, and 'rounds_us' keeps each round's."""
    specs = suite.entries(stack.device, stack.n, stack.k, m, options)
    rows: list[Optional[dict]] = [None] * len(specs)
    built: list[tuple[int, dict, Entry]] = []
    for i, spec in enumerate(specs):
        row = base_row(suite, spec, stack, m)
        if spec.skip:
            rows[i] = {**row, "status": "skipped", "reason": spec.skip}
            continue
        try:  # an anchor missing from this torch build, a kernel error: recorded, not fatal
            entry = suite.build(spec, stack, m)
            if repeats <= 1:
                with spec.switches():
                    rows[i] = ok_row(row, entry, time_calls(entry.calls, stack.device, m, budget_s, quick), bandwidth)
                del entry
            else:
                built.append((i, row, entry))
        except Exception as exc:
            rows[i] = _error(row, exc)
    rounds: dict[int, list[dict]] = {i: [] for i, _, _ in built}
    for _ in range(max(repeats, 1) if built else 0):
        for i, row, entry in built:
            if rows[i] is not None:  # failed in an earlier round
                continue
            try:
                with entry.spec.switches():
                    rounds[i].append(time_calls(entry.calls, stack.device, m, budget_s / repeats, quick))
            except Exception as exc:
                rows[i] = _error(row, exc)
    for i, row, entry in built:
        if rows[i] is None:
            times = [r["time_us"] for r in rounds[i]]
            timing = {**rounds[i][0], "time_us": statistics.median(times), "rounds_us": times,
                      "timing": f"median of {repeats} interleaved rounds ({rounds[i][0]['timing']})"}
            if "min_us" in timing:
                timing["min_us"] = min(r["min_us"] for r in rounds[i])
                timing["samples"] = sum(r["samples"] for r in rounds[i])
            rows[i] = ok_row(row, entry, timing, bandwidth)
    return [r for r in rows if r is not None]
