"""``python -m router [options]`` runs the router, like ``switchboard router [options]``."""

import argparse
import sys

from router.logfmt import add_log_arguments, configure_logging
from router.main import add_router_arguments, run_router

parser = argparse.ArgumentParser(prog="python -m router", description="Run the central router.")
add_router_arguments(parser)
add_log_arguments(parser)
args = parser.parse_args()
configure_logging(args.log_level, args.log_format)
sys.exit(run_router(args))
