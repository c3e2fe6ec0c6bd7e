"""A tiny run of the benchmark harness (bench/) so that it cannot rot.

Only absurd-orm's adapter runs here (the peers are not installed in the test venv); the
report is rendered with made-up peer figures to check the ratio columns.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from absurd_orm.testing import PostgresServer

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import harness, report  # noqa: E402
from bench.systems import make_system  # noqa: E402

TINY = harness.Settings(reps=1, n_spawn=20, n_e2e=20, n_lat=2, n_evt=1, idle_gap=0.05,
                        w5_rows=300, w5_claims=20, e2e_timeout=120.0)


def _check_numbers(res: dict) -> None:
    assert res["w1"]["spawn_per_s"] > 0
    assert res["w1"].get("bulk_na") or res["w1"]["bulk_per_s"] > 0
    for label, _, _ in harness.W2_CONFIGS:
        w2 = res["w2"][label]
        assert "error" not in w2, w2
        assert w2["tasks_per_s"] > 0 and w2["steps_per_s"] == pytest.approx(3 * w2["tasks_per_s"])
        assert w2["peak_rss_kib"] > 0
    assert res["w3"]["p50_ms"] > 0 and res["w3"]["peak_rss_kib"] > 0
    assert res["w4"]["p50_ms"] > 0
    for phase in ("empty", "loaded"):
        assert res["w5"][phase]["claims_per_s"] > 0
        assert res["w5"][phase]["work_per_s"] > 0


@pytest.mark.slow
def test_bench_absurd_orm_sqlite(tmp_path: Path) -> None:
    sysm = make_system("absurd-orm-sqlite", {"workdir": str(tmp_path)})
    res = harness.run_system(sysm, TINY, tmp_path / "raw.json")
    _check_numbers(res)
    assert res["settings"]["synchronous"] == "FULL"
    assert (tmp_path / "raw.json").exists()


@pytest.mark.slow
def test_bench_absurd_orm_postgres(tmp_path: Path, postgres_server: object) -> None:
    if not isinstance(postgres_server, PostgresServer):
        pytest.skip("needs a PostgreSQL server of our own (creates databases)")
    sysm = make_system("absurd-orm-pg", {"workdir": str(tmp_path),
                                         "pg_dsn": postgres_server.dsn("postgres")})
    settings = copy.copy(TINY)
    settings.workloads = ("w1", "w2", "w5")
    res = harness.run_system(sysm, settings)
    assert res["w1"]["spawn_per_s"] > 0
    assert all(res["w2"][label]["tasks_per_s"] > 0 for label, _, _ in harness.W2_CONFIGS)
    assert res["w5"]["loaded"]["claims_per_s"] > 0


def _fake(name: str, ours: bool, factor: float) -> dict:
    w2 = {label: {"tasks_per_s": 100 * factor, "steps_per_s": 300 * factor,
                  "peak_rss_kib": 40_000 / factor} for label, _, _ in harness.W2_CONFIGS}
    return {
        "system": name, "title": name, "ours": ours, "settings": {"synchronous": "FULL"},
        "run": TINY.as_dict(),
        "w1": {"spawn_per_s": 1000 * factor, "bulk_na": "n/a: none"},
        "w2": w2,
        "w3": {"p50_ms": 100 / factor, "p95_ms": 200 / factor, "peak_rss_kib": 30_000},
        "w4": {"error": "RuntimeError: boom"},
        "w5": {"na": "n/a: no claim call"} if not ours else
              {"empty": {"claims_per_s": 500, "work_per_s": 300},
               "loaded": {"claims_per_s": 450, "work_per_s": 280}},
    }


def test_report_renders_ratios() -> None:
    systems = {"absurd-orm-sqlite": _fake("absurd-orm-sqlite", True, 2.0),
               "absurd-orm-pg": _fake("absurd-orm-pg", True, 1.0),
               "dbos-sqlite": _fake("dbos-sqlite", False, 1.0)}
    text = report.render(systems, {"nproc": 2, "sqlite": "3.40.1"})
    assert "## Ratios ours / peer" in text
    assert "ours-SQLite / DBOS-SQLite" in text and "ours-PG / DBOS-SQLite" in text
    ratio_rows = text.split("## Ratios ours / peer")[1].split("##")[0]
    # W1: 2000 vs 1000 spawns/s -> 2.00 better; W3 latency 50 vs 100 ms -> 0.50 better
    assert "| W1 spawn/s (one call each) | 2.00 **better** | 1.00 same |" in ratio_rows
    assert "0.50 **better**" in ratio_rows
    assert "W4 failed: RuntimeError: boom" in text
    assert "n/a: no claim call" in text
    assert "0.90x" in text  # W5 loaded / empty


def test_settings_from_env() -> None:
    s = harness.Settings.from_env({"BENCH_QUICK": "1", "BENCH_REPS": "2",
                                   "BENCH_WORKLOADS": "w1,w3"})
    assert s.reps == 2 and s.w5_rows == 20_000 and s.workloads == ("w1", "w3")
    full = harness.Settings.from_env({"BENCH_N": "100"})
    assert full.n_spawn == 100 and full.n_e2e == 100 and full.w5_rows == 1_000_000
