"""The wheel carries the top-level ``migrations/`` as ``absurd_orm/_migrations``.

Builds the wheel (no build isolation: hatchling comes from the test environment),
installs it in a fresh virtualenv (its dependencies come from the package index), then,
from a directory outside the checkout: ``absurd-orm migrate``, a task run end to end,
and a host project whose ``version_locations`` names ``absurd_orm:_migrations/versions``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from test_migrations import ABSURD_TABLES, REPO, write_host_project

pytestmark = pytest.mark.slow

_LEAKY = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "ABSURD_DATABASE_URL", "PYTHONSTARTUP"}
TIMEOUT = 300  # seconds, per subprocess (the install downloads SQLAlchemy and alembic)


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Keep proxies and index settings for pip, but nothing that could make the installed
    # package see the checkout or another database.
    base = {k: v for k, v in os.environ.items() if k not in _LEAKY}
    proc = subprocess.run(cmd, cwd=cwd, env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        pytest.fail(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                    f"stderr:\n{proc.stderr}", pytrace=False)
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("hatchling", reason="building the wheel needs hatchling (pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--disable-pip-version-check", "-w", str(out), str(REPO)], cwd=out)
    wheels = list(out.glob("absurd_orm-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only the wheel (and its dependencies) installed."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(root)
    python = root / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel)],
         cwd=root)
    return python


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory outside the checkout."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert REPO not in work.parents
    return work


def test_wheel_contains_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        shipped = {n: zf.read(n) for n in names if n.startswith("absurd_orm/_migrations/")}
    assert "absurd_orm/_migrations/env.py" in names
    assert "absurd_orm/_migrations/versions/absurd_0001_initial.py" in names
    # Byte for byte the checkout's files, and every revision of the checkout.
    for path in (REPO / "migrations").rglob("*.py"):
        rel = path.relative_to(REPO / "migrations").as_posix()
        assert shipped.get(f"absurd_orm/_migrations/{rel}") == path.read_bytes(), rel
    assert not any(n.startswith("migrations/") for n in names)  # not a top-level package
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as zf:
        assert "absurd-orm = absurd_orm.cli:main" in zf.read(entry_points).decode()


def test_installed_package_migrates_and_runs(venv_python: Path, outside: Path) -> None:
    db = outside / "w.db"
    url = f"sqlite:///{db}"
    cli = venv_python.parent / "absurd-orm"
    out = _run([str(cli), "migrate", "--url", url], cwd=outside)
    assert "schema is current" in out.stdout
    _run([str(cli), "check", "--url", url], cwd=outside)

    snippet = textwrap.dedent(f"""
        import sysconfig
        from pathlib import Path
        import absurd_orm
        from absurd_orm import Engine, migration

        site = Path(sysconfig.get_paths()["purelib"]).resolve()
        where = migration.script_location()
        assert site in where.parents, (where, site)
        assert where.name == "_migrations", where
        assert (migration.versions_dir() / "absurd_0001_initial.py").is_file()
        assert site in Path(absurd_orm.__file__).resolve().parents

        with Engine({url!r}) as engine:
            @engine.register_task(name="double")
            def double(params, ctx):
                return ctx.step("x2", lambda: params["n"] * 2)

            engine.create_queue()
            spawned = engine.spawn("double", {{"n": 21}})
            assert engine.work_batch(batch_size=5) == 1
            snap = engine.fetch_task_result(spawned.task_id)
            assert snap.state == "completed" and snap.result == 42, snap
        print("ran", where)
    """)
    out = _run([str(venv_python), "-c", snippet], cwd=outside)
    assert "ran " in out.stdout and "site-packages" in out.stdout

    eng = sa.create_engine(url)
    try:
        assert ABSURD_TABLES <= set(sa.inspect(eng).get_table_names())
        with eng.connect() as conn:
            rows = conn.execute(sa.text("SELECT version_num FROM absurd_alembic_version")).scalars()
            assert list(rows) == ["absurd_0001_initial"]
    finally:
        eng.dispose()


def test_installed_package_embeds_in_a_host_history(venv_python: Path, outside: Path) -> None:
    host = write_host_project(outside / "host", "absurd_orm:_migrations/versions")
    url = f"sqlite:///{outside / 'host.db'}"
    env = {"HOST_DATABASE_URL": url}
    _run([str(venv_python), "-m", "alembic", "upgrade", "heads"], cwd=host, env=env)

    eng = sa.create_engine(url)
    try:
        names = set(sa.inspect(eng).get_table_names())
        with eng.connect() as conn:
            rows = sorted(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        eng.dispose()
    assert ABSURD_TABLES <= names and "host_items" in names
    assert "absurd_alembic_version" not in names
    assert rows == ["absurd_0001_initial", "host_0001_items"]

    snippet = textwrap.dedent(f"""
        from absurd_orm import Engine
        with Engine({url!r}) as engine:
            engine.create_queue()
            engine.spawn("anything", {{}}, queue="default")
            assert engine.list_queues() == ["default"]
    """)
    _run([str(venv_python), "-c", snippet], cwd=outside)
