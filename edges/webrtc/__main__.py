"""``python -m edges.webrtc [options]``: the webrtc edge, like ``switchboard edge webrtc [options]``."""

import sys

from edges.webrtc.edge import main

sys.exit(main())
