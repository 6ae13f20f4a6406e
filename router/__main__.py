"""``python -m router [options]`` runs the router, like ``switchboard router [options]``."""

import sys

from router.cli import main

sys.exit(main(["router", *sys.argv[1:]]))
