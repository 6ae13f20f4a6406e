"""The WebRTC edge: WHEP-style signaling, aiortc peers and video tracks, around the edge core."""
