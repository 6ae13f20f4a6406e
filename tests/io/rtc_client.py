"""A WebRTC edge process and an aiortc client written from the protocol doc, for integration tests."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any
from urllib.parse import urlsplit

import aioice.ice
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from tests.io.harness import EdgeProcess

DATA_HEADER = struct.Struct("!BBIQ")
SKIPPED = struct.Struct("!BBIQQI")


def loopback_only() -> None:
    """aioice never offers 127.0.0.1 by itself; the tests use nothing else."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class WebRtcEdgeProcess(EdgeProcess):
    """``python -m edges.webrtc`` on a free port, linked to ``router``."""

    name = "webrtc edge"
    module = "edges.webrtc"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.announced['port']}"


async def http(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on its own connection: status, headers (lower-case names), body."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        response_headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
        content = await reader.readexactly(int(response_headers.get("content-length", "0")))
        writer.close()
        return int(status_line.split(" ")[1]), response_headers, content


class RtcClient:
    """One ``switchboard.v1`` client over WebRTC: three negotiated data channels, an offer POSTed
    to the edge's signaling URL, JSON on ``control`` and data frames on ``reliable`` and ``lossy``."""

    def __init__(self, base_url: str, video_slots: int = 0) -> None:
        self.base_url = base_url
        self.video_slots = video_slots
        self.resource: str | None = None
        self.controls: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        """(channel label, frame) in arrival order."""
        self.next_id = 1
        self.tracks: list[MediaStreamTrack] = []
        """Every remote track, of this peer connection and those before it."""
        self.pc = self._new_peer()

    def _new_peer(self) -> RTCPeerConnection:
        pc = RTCPeerConnection()
        self.control = pc.createDataChannel("control", negotiated=True, id=0)
        reliable = pc.createDataChannel("reliable", negotiated=True, id=1)
        lossy = pc.createDataChannel("lossy", negotiated=True, id=2, ordered=False, maxRetransmits=0)
        self.control.on("message", lambda message: self.controls.put_nowait(json.loads(message)))
        for channel in (reliable, lossy):
            channel.on("message", self._frame_handler(channel))
        for _ in range(self.video_slots):
            pc.addTransceiver("video", direction="recvonly")
        pc.on("track", self.tracks.append)
        return pc

    def _frame_handler(self, channel: RTCDataChannel) -> Any:
        label = channel.label
        return lambda message: self.frames.put_nowait((label, message))

    async def _offer(self) -> bytes:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp.encode()

    async def connect(self, token: str | None = None) -> tuple[int, bytes]:
        """POST the offer; on 201 apply the answer. Returns the status and body."""
        headers = {"Content-Type": "application/sdp"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        status, response_headers, body = await http(
            "POST", f"{self.base_url}/whep", await self._offer(), headers
        )
        if status == 201:
            self.resource = response_headers["location"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
        return status, body

    async def restart(self) -> int:
        """A new peer connection for the same session (PATCH of the resource with a new offer)."""
        assert self.resource is not None
        old = self.pc
        self.pc = self._new_peer()
        headers = {"Content-Type": "application/sdp"}
        status, _, body = await http("PATCH", self.base_url + self.resource, await self._offer(), headers)
        if status == 200:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
        await old.close()
        return status

    async def leave(self) -> int:
        assert self.resource is not None
        status, _, _ = await http("DELETE", self.base_url + self.resource)
        return status

    async def close(self) -> None:
        await self.pc.close()

    def vanish(self) -> None:
        """Stop sending and receiving at once, with no goodbye: a peer whose host went away."""
        sctp = self.pc.sctp
        assert sctp is not None
        connection = sctp.transport.transport._connection
        for protocol in connection._protocols:
            if protocol.transport is not None:
                protocol.transport.close()

    def send(self, message: dict[str, Any]) -> None:
        self.control.send(json.dumps(message))

    async def control_message(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            return await self.controls.get()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        request_id = self.next_id
        self.next_id += 1
        self.send({"op": op, "id": request_id, **fields})
        reply = await self.control_message()
        assert reply.get("id") == request_id, reply
        return reply

    async def data(self, timeout: float = 5.0) -> tuple[str, int, int, bytes]:
        """The next data frame as (data channel label, channel, offset, payload)."""
        async with asyncio.timeout(timeout):
            while True:
                label, frame = await self.frames.get()
                if frame[0] == 1:
                    _, _, channel, offset = DATA_HEADER.unpack_from(frame)
                    return label, channel, offset, frame[DATA_HEADER.size :]

    def received_data(self) -> list[tuple[str, int, int, bytes]]:
        """The data frames that arrived and were not read yet, as :meth:`data` gives them."""
        frames = []
        while not self.frames.empty():
            label, frame = self.frames.get_nowait()
            if frame[0] == 1:
                _, _, channel, offset = DATA_HEADER.unpack_from(frame)
                frames.append((label, channel, offset, frame[DATA_HEADER.size :]))
        return frames
