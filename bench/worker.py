"""Worker process entry point: ``python -m bench.worker --system NAME --config JSON ...``.

Started by the driver (``bench.harness.Workers``); runs the system's own worker loop
until the driver writes ``stop`` on stdin, then reports its task timings (see
``bench.harness.serve_control``).
"""

from __future__ import annotations

import argparse
import json

from . import harness
from .systems import make_system


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--system", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--poll", type=float, default=None, help="omit for the system's default")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--init-only", action="store_true",
                    help="create the system's schema and exit (systems that need a launch)")
    args = ap.parse_args()
    sysm = make_system(args.system, json.loads(args.config))
    if args.init_only:
        sysm.init_schema_in_process()  # type: ignore[attr-defined]
        return
    harness.serve_control()
    sysm.run_worker(args.concurrency, args.poll, args.index)


if __name__ == "__main__":
    main()
