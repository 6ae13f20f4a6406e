"""``python -m edges.websocket [options]``, like ``switchboard edge websocket [options]``."""

import sys

from edges.websocket.edge import main

sys.exit(main())
