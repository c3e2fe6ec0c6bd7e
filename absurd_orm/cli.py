"""The ``absurd-orm`` command: migrate, check the schema, run a worker."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from .engine import DEFAULT_URL, Engine
from .errors import AbsurdError

__all__ = ["main"]


def _url(args: argparse.Namespace) -> str:
    return args.url or os.environ.get("ABSURD_DATABASE_URL") or DEFAULT_URL


def _load_engine(spec: str) -> Engine:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"--app must look like 'package.module:engine', got {spec!r}")
    sys.path.insert(0, os.getcwd())
    engine = getattr(importlib.import_module(module_name), attr)
    if not isinstance(engine, Engine):
        raise SystemExit(f"{spec} is a {type(engine).__name__}, not an absurd_orm.Engine")
    return engine


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``absurd-orm`` console script."""
    parser = argparse.ArgumentParser(prog="absurd-orm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    url_help = f"SQLAlchemy URL (default: $ABSURD_DATABASE_URL, else {DEFAULT_URL})"

    p = sub.add_parser("migrate", help="bring the schema to the current version")
    p.add_argument("--url", help=url_help)
    p = sub.add_parser("check", help="exit 1 unless the schema is current")
    p.add_argument("--url", help=url_help)
    p = sub.add_parser("worker", help="run a worker for the tasks an application registers")
    p.add_argument("--app", required=True, help="'module:engine' naming an absurd_orm.Engine")
    p.add_argument("--queue", help="queue to work (default: the engine's)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--batch-size", type=int, help="runs claimed at once (default: concurrency)")
    p.add_argument("--poll-interval", type=float, default=0.25)
    p.add_argument("--claim-timeout", type=float, default=120)
    p.add_argument("--worker-id")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        if args.command == "migrate":
            with Engine(_url(args), check_schema=False) as engine:
                engine.migrate()
            print(f"absurd-orm schema is current in {_safe(_url(args))}")
        elif args.command == "check":
            with Engine(_url(args)) as engine:
                engine.list_queues()
            print(f"absurd-orm schema is current in {_safe(_url(args))}")
        else:
            engine = _load_engine(args.app)
            engine.start_worker(worker_id=args.worker_id, claim_timeout=args.claim_timeout,
                                concurrency=args.concurrency, batch_size=args.batch_size,
                                poll_interval=args.poll_interval,
                                queue_name=args.queue)
    except AbsurdError as exc:
        print(f"absurd-orm: {exc}", file=sys.stderr)
        return 1
    return 0


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    raise SystemExit(main())
