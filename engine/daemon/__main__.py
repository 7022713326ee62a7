"""`python -m engine.daemon`: the engine process (`--detach`: forked into the background)."""

from __future__ import annotations

import argparse
import sys

from engine.core.layout import home_path
from engine.core.store import Store
from engine.daemon import options as optmod
from engine.daemon.server import detach, serve, serve_in_terminal, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.daemon",
        description="The kdtui engine: trains queued runs of a store on GPU/CPU slots.",
    )
    p.add_argument("--home", default=None, help="store directory (default $KDTUI_HOME)")
    optmod.add_arguments(p)
    p.add_argument("--detach", action="store_true", help="fork into the background")
    args = p.parse_args(argv)
    options = optmod.from_namespace(args)
    if not args.detach:
        return serve_in_terminal(args.home, options)
    home = home_path(args.home)
    Store(home).close()
    code = detach(home)
    if code is not None:
        return code
    setup_logging(sys.stderr)
    return serve(home, options)


if __name__ == "__main__":
    sys.exit(main())
