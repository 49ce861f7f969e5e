"""`python -m fxrec.serving --run R --vm V [--port P] [--config JSON]`: one scoring server as its own
process, the way `ServerProcess` starts one (the load test's servers). The config is a ServingConfig as
JSON; people start servers with `fxrec serve`, whose options are the same fields."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fxrec.run import RunError
from fxrec.serving.server import DEFAULT_HOST, serve
from fxrec.serving.service import ServingConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fxrec.serving", description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="run directory")
    parser.add_argument("--vm", required=True, help="the expert model to serve")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--config", default="{}", help="ServingConfig fields as JSON")
    args = parser.parse_args(argv)
    config = ServingConfig.model_validate_json(args.config)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve(args.run, args.vm, config, host=args.host, port=args.port, log_level=args.log_level)
    except (RunError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
