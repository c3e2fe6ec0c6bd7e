"""Test helpers: a throwaway PostgreSQL server, so test suites can swap SQLite for Postgres.

>>> with PostgresServer() as pg:
...     engine = Engine(pg.url("mydb"))

It uses the PostgreSQL binaries installed on the machine (Debian's
``/usr/lib/postgresql/<version>/bin``, or ``pg_config --bindir``), runs ``initdb`` in a
temporary directory (as the ``postgres`` user when running as root, since PostgreSQL
refuses to run as root), listens on a free loopback port and deletes everything on stop.
No Docker needed.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_pg_bindir"]


class PostgresUnavailable(RuntimeError):
    """PostgreSQL binaries are missing or the server could not start."""


def find_pg_bindir() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``, or None."""
    env = os.environ.get("ABSURD_PG_BINDIR")
    if env:
        return Path(env)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for path in reversed(candidates):
        if (Path(path) / "initdb").exists():
            return Path(path)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1, created on start and removed on stop.

    Args:
        durable: keep fsync on (benchmarks); tests turn it off for speed.
        settings: extra ``postgresql.conf`` settings (``{"max_connections": "200"}``).
    """

    def __init__(self, *, durable: bool = False, settings: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.bindir = find_pg_bindir()
        self.durable = durable
        self.settings = dict(settings or {})
        self.port = port or _free_port()
        self.root: Path | None = None
        self._as: list[str] = []

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        assert self.root is not None
        return self.root / "data"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as, *cmd], capture_output=True, text=True, check=check,
                              timeout=120)

    def start(self) -> PostgresServer:
        """initdb, then start the server and wait until it accepts connections."""
        if self.bindir is None:
            raise PostgresUnavailable("PostgreSQL is not installed (no initdb found); "
                                      "install it, e.g. `apt-get install postgresql`")
        self.root = Path(tempfile.mkdtemp(prefix="absurd-pg-"))
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root needs runuser to drop to 'postgres'")
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")
        os.chmod(self.root, 0o700)
        try:
            self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                      "--auth=trust", "-E", "UTF8", "--no-sync")
        except subprocess.CalledProcessError as exc:
            raise PostgresUnavailable(f"initdb failed: {exc.stderr or exc.stdout}") from exc
        conf = {"listen_addresses": "'127.0.0.1'", "port": str(self.port),
                "unix_socket_directories": f"'{self.root}'", "max_connections": "200",
                "shared_buffers": "128MB"}
        if not self.durable:
            conf.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        conf.update(self.settings)
        with open(self.datadir / "postgresql.auto.conf", "a") as f:
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")
        log = self.root / "server.log"
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(log),
                      "-w", "-t", "60", "start")
        except subprocess.CalledProcessError as exc:
            text = log.read_text() if log.exists() else ""
            raise PostgresUnavailable(f"PostgreSQL did not start: {exc.stderr}\n{text}") from exc
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and delete its directory."""
        if self.root is None:
            return
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w",
                  "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def restart(self, mode: str = "fast") -> None:
        """Restart the server in place (the data survives)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w",
                  "-l", str(self.root / "server.log"), "restart")

    def create_database(self, name: str) -> str:
        """Create database ``name`` (dropping an old one) and return its URL."""
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL using psycopg 3."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server accepts connections again (after a restart)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._run(str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p",
                         str(self.port), check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise PostgresUnavailable("PostgreSQL did not come back")

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
