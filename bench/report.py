"""Render the raw JSON of a run (``bench/raw/*.json``) as a markdown report with ratios.

``python -m bench.report RAW_DIR OUT.md``. Every ratio is ours / peer: for throughput a
ratio above 1 means absurd-orm is better, for latency and memory a ratio below 1 does;
each cell says which.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

OURS_ORDER = ("absurd-orm-sqlite", "absurd-orm-pg")
PEER_ORDER = ("absurd-sdk-pg", "dbos-sqlite", "dbos-pg")
SHORT = {"absurd-orm-sqlite": "ours-SQLite", "absurd-orm-pg": "ours-PG",
         "absurd-sdk-pg": "Absurd-PG", "dbos-sqlite": "DBOS-SQLite", "dbos-pg": "DBOS-PG"}

NA = "n/a"
FAILED = "failed"


class Metric:
    """One row: a label, how to read the value from a system's results, and its sense."""

    def __init__(self, label: str, path: tuple[str, ...], better: str, kind: str = "rate",
                 scale: float = 1.0, ratio: bool = True,
                 compute: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.label, self.path, self.better, self.kind = label, path, better, kind
        self.scale, self.ratio, self.compute = scale, ratio, compute

    def value(self, res: dict[str, Any]) -> float | str:
        """The number, or ``n/a`` / ``failed`` with the workload's own reason."""
        if self.compute is not None:
            try:
                v = self.compute(res)
            except (KeyError, TypeError, ZeroDivisionError):
                v = None
            return NA if v is None else v
        node: Any = res
        for key in self.path:
            if not isinstance(node, dict):
                return NA
            if "error" in node:
                return FAILED
            if "na" in node:
                return NA
            if key not in node:
                if key == "bulk_per_s" and "bulk_na" in node:
                    return NA
                return NA
            node = node[key]
        if isinstance(node, dict) and "error" in node:
            return FAILED
        if node is None:
            return NA
        return float(node) * self.scale

    def fmt(self, v: float | str) -> str:
        if isinstance(v, str):
            return v
        if self.kind == "ms":
            return f"{v:,.1f}"
        if self.kind == "x":
            return f"{v:.2f}x"
        if self.kind == "mib":
            return f"{v:,.0f}"
        return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def _w5_slowdown(phase_key: str) -> Callable[[dict[str, Any]], Any]:
    def f(res: dict[str, Any]) -> Any:
        w5 = res.get("w5") or {}
        if "loaded" not in w5 or "empty" not in w5:
            return None
        return w5["loaded"][phase_key] / w5["empty"][phase_key]
    return f


def metrics(w5_rows: int | None) -> list[Metric]:
    rows = f"{w5_rows:,}" if w5_rows else "N"
    out = [
        Metric("W1 spawn/s (one call each)", ("w1", "spawn_per_s"), "higher"),
        Metric("W1 bulk spawn/s", ("w1", "bulk_per_s"), "higher"),
    ]
    for label, desc in (("1x1", "1 proc x 1"), ("1x8", "1 proc x 8 threads"),
                        ("2x4", "2 procs x 4")):
        out.append(Metric(f"W2 tasks/s, {desc}", ("w2", label, "tasks_per_s"), "higher"))
        out.append(Metric(f"W2 steps/s, {desc}", ("w2", label, "steps_per_s"), "higher",
                          ratio=False))
    out += [
        Metric("W3 spawn-to-done p50 ms (default poll)", ("w3", "p50_ms"), "lower", "ms"),
        Metric("W3 spawn-to-done p95 ms (default poll)", ("w3", "p95_ms"), "lower", "ms"),
        Metric("W4 event round trip p50 ms", ("w4", "p50_ms"), "lower", "ms"),
        Metric("W4 event round trip p95 ms", ("w4", "p95_ms"), "lower", "ms"),
        Metric("W5 claims/s, empty DB", ("w5", "empty", "claims_per_s"), "higher"),
        Metric(f"W5 claims/s, {rows} finished tasks", ("w5", "loaded", "claims_per_s"), "higher"),
        Metric("W5 claim+run+complete/s, empty DB", ("w5", "empty", "work_per_s"), "higher"),
        Metric(f"W5 claim+run+complete/s, {rows} finished", ("w5", "loaded", "work_per_s"),
               "higher"),
        Metric("W5 claims/s loaded / empty", (), "higher", "x", compute=_w5_slowdown("claims_per_s")),
        Metric("W5 claim+complete/s loaded / empty", (), "higher", "x",
               compute=_w5_slowdown("work_per_s")),
        Metric("Worker peak RSS MiB, W2 1x1", ("w2", "1x1", "peak_rss_kib"), "lower", "mib",
               1 / 1024),
        Metric("Worker peak RSS MiB, W2 1x8", ("w2", "1x8", "peak_rss_kib"), "lower", "mib",
               1 / 1024),
        Metric("Worker peak RSS MiB, W2 2x4 (larger process)", ("w2", "2x4", "peak_rss_kib"),
               "lower", "mib", 1 / 1024),
        Metric("Worker peak RSS MiB, W3 idle worker", ("w3", "peak_rss_kib"), "lower", "mib",
               1 / 1024),
    ]
    return out


def ratio_cell(m: Metric, ours: float | str, peer: float | str) -> str:
    if isinstance(ours, str) or isinstance(peer, str) or not peer:
        return NA
    r = ours / peer
    if abs(r - 1) < 0.02:
        verdict = "same"
    elif (r > 1) == (m.better == "higher"):
        verdict = "**better**"
    else:
        verdict = "worse"
    return f"{r:.2f} {verdict}"


def load(raw_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    systems: dict[str, dict[str, Any]] = {}
    machine: dict[str, Any] = {}
    for p in sorted(raw_dir.glob("*.json")):
        data = json.loads(p.read_text())
        if p.name == "machine.json":
            machine = data
        elif "system" in data:
            systems[data["system"]] = data
    return systems, machine


def _table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render(systems: dict[str, dict[str, Any]], machine: dict[str, Any]) -> str:
    order = [n for n in OURS_ORDER + PEER_ORDER if n in systems] + \
            [n for n in systems if n not in OURS_ORDER + PEER_ORDER]
    ours = [n for n in order if systems[n].get("ours")]
    peers = [n for n in order if not systems[n].get("ours")]
    run = next((systems[n].get("run") for n in order if systems[n].get("run")), {}) or {}
    ms = metrics(run.get("w5_rows"))
    lines: list[str] = []
    lines.append("# absurd-orm benchmark")
    lines.append("")
    started = machine.get("started") or next((systems[n].get("started") for n in order), "?")
    lines.append(f"Generated by `bench/run.sh`; run started {started}"
                 f"{' (BENCH_QUICK: a tiny smoke-size run, numbers not meaningful)' if machine.get('quick') else ''}. "
                 f"Medians of {run.get('reps', '?')} repetitions; W1-W4 on a fresh database "
                 "each repetition. Every system ran back to back in one session on this machine "
                 "and the same PostgreSQL server. Compare ratios, not absolute figures.")
    lines.append("")
    if machine:
        lines.append("## Machine")
        lines.append("")
        for key in ("absurd_orm_revision", "date", "nproc", "cpu", "ram", "kernel", "python", "sqlite", "postgresql",
                    "postgresql_settings", "loadavg_start", "loadavg_end", "note"):
            if machine.get(key) not in (None, ""):
                lines.append(f"- {key.replace('_', ' ')}: {machine[key]}")
        lines.append("")
    lines.append("## Results")
    lines.append("")
    header = ["Metric"] + [systems[n].get("title", n) for n in order]
    rows = []
    for m in ms:
        vals = [m.fmt(m.value(systems[n])) for n in order]
        if all(v in (NA,) for v in vals):
            continue
        rows.append([m.label] + vals)
    lines += _table(header, rows, ["l"] + ["r"] * len(order))
    lines.append("")
    lines.append("Steps/s = 3 x tasks/s (3 checkpointed steps per task). W3 and W4 run one "
                 "idle worker at each system's default poll interval (see Settings), so they "
                 "mostly measure that default. n/a: the system has no such operation or it "
                 "was not measured (reasons below); failed: see the raw JSON.")
    lines.append("")
    if ours and peers:
        lines.append("## Ratios ours / peer")
        lines.append("")
        lines.append("Each cell is absurd-orm's figure divided by the peer's. Throughput: above 1 "
                     "is better for absurd-orm. Latency and memory: below 1 is better. "
                     "'same' = within 2%.")
        lines.append("")
        pairs = [(o, p) for o in ours for p in peers]
        header = ["Metric"] + [f"{SHORT.get(o, o)} / {SHORT.get(p, p)}" for o, p in pairs]
        rows = []
        for m in ms:
            if not m.ratio:
                continue
            cells = [ratio_cell(m, m.value(systems[o]), m.value(systems[p])) for o, p in pairs]
            if all(c == NA for c in cells):
                continue
            rows.append([m.label] + cells)
        lines += _table(header, rows, ["l"] + ["r"] * len(pairs))
        lines.append("")
    if len(ours) == 2:
        lines.append("## absurd-orm: SQLite / PostgreSQL")
        lines.append("")
        a, b = ours
        rows = []
        for m in ms:
            if m.ratio:
                cell = ratio_cell(m, m.value(systems[a]), m.value(systems[b]))
                if cell != NA:
                    rows.append([m.label, cell.replace("**better**", "SQLite better")
                                 .replace("worse", "PostgreSQL better")])
        lines += _table(["Metric", "SQLite / PostgreSQL"], rows, ["l", "r"])
        lines.append("")
    notes = []
    for n in order:
        res = systems[n]
        for wl in ("w1", "w2", "w3", "w4", "w5"):
            node = res.get(wl)
            if not isinstance(node, dict):
                continue
            if "error" in node:
                notes.append(f"- {n} {wl.upper()} failed: {node['error']}")
            if "na" in node:
                notes.append(f"- {n} {wl.upper()}: {node['na']}")
            if "bulk_na" in node:
                notes.append(f"- {n} W1 bulk spawn: {node['bulk_na']}")
            if wl == "w2":
                for label, sub in node.items():
                    if isinstance(sub, dict) and "error" in sub:
                        notes.append(f"- {n} W2 {label} failed: {sub['error']}")
        if res.get("skipped"):
            notes.append(f"- {n}: skipped: {res['skipped']}")
    if notes:
        lines.append("## Not measured / failed")
        lines.append("")
        lines += notes
        lines.append("")
    lines.append("## Settings")
    lines.append("")
    if run:
        lines.append(f"- Run: reps {run.get('reps')}; W1 {run.get('n_spawn')} spawns; "
                     f"W2 {run.get('n_e2e')} tasks per configuration, worker poll interval "
                     f"{run.get('w2_poll')} s for every system (idle polls only, except DBOS "
                     f"whose queue dispatches on each poll); W3 {run.get('n_lat')} samples after "
                     f"3 warm-ups, W4 {run.get('n_evt')} after 1, each after an idle gap of "
                     f"U(0.05, {0.05 + float(run.get('idle_gap') or 0):.2f}) s; W5 "
                     f"{run.get('w5_rows'):,} finished tasks preloaded, {run.get('w5_claims')} "
                     "claims per repetition.")
    for n in order:
        st = systems[n].get("settings") or {}
        text = "; ".join(f"{k}={v}" for k, v in st.items())
        lines.append(f"- **{systems[n].get('title', n)}**: {text}")
    lines.append("")
    lines.append("## Method")
    lines.append("")
    lines += [
        "- W1: one spawn call (one transaction) per task with small JSON params from the "
        "driver process, no worker running. Bulk spawn: the engine's bulk call in chunks "
        "of 1,000 where it exists.",
        "- W2: N tasks of 3 checkpointed trivial steps are spawned, then the worker "
        "process(es) start. Wall time = first task-body entry to last task-body exit, "
        "`time.time()` inside the worker processes (each reports its own when the driver "
        "stops it). Configurations: 1 process x concurrency 1; 1 process x 8 threads; "
        "2 processes x 4.",
        "- W3: one idle worker (concurrency 1) at the system's default poll interval; after "
        "a random idle gap the driver spawns a one-step task; latency = driver clock just "
        "before the spawn call to the driver seeing the task completed (it polls the "
        "database every ~2 ms; absurd-orm through `fetch_task_result`, peers with one "
        "SELECT on their status table).",
        "- W4: a task waits for an event (absurd-orm and Absurd: `await_event`, which "
        "suspends the run; DBOS: `recv`, which blocks the workflow thread). Once it is "
        "parked and after an idle gap, the driver emits (`emit_event` / `DBOSClient.send`); "
        "round trip = emit call to observed completion.",
        "- W5: on an empty database and on one preloaded with N finished tasks (one "
        "completed run each; written as bulk test data; PostgreSQL then VACUUM ANALYZEd as "
        "autovacuum would; SQLite not ANALYZEd, as an application would not), spawn M "
        "no-op tasks and time `claim_tasks(batch_size=1)` until the queue is empty, then "
        "spawn M more and time `work_batch(batch_size=1)` (claim, run, complete) until empty. "
        "Single-threaded, in the driver process.",
        "- Peak RSS: `ru_maxrss` of each worker process from `os.wait4`; with 2 processes, the "
        "larger.",
        "- Raw figures (every repetition) are in `raw/*.json`.",
    ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m bench.report RAW_DIR OUT.md")
    systems, machine = load(Path(args[0]))
    Path(args[1]).write_text(render(systems, machine))


if __name__ == "__main__":
    main()
