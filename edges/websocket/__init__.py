"""The WebSocket edge: websockets' sans-I/O protocol on asyncio transports, around the edge core."""
