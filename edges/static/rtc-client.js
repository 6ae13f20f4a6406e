// A switchboard.v1 transport over WebRTC (docs/protocol.md, 4.9): three negotiated data channels,
// optional video slots, and WHEP-style signaling (POST the offer, PATCH to restart, DELETE to leave).

const CHANNELS = [
  ["control", { negotiated: true, id: 0 }],
  ["reliable", { negotiated: true, id: 1 }],
  ["lossy", { negotiated: true, id: 2, ordered: false, maxRetransmits: 0 }],
];

export class RtcTransport {
  /** whepUrl: the edge's signaling URL; videoSlots: video tracks the edge may fill with video topics. */
  constructor(whepUrl, { token = undefined, videoSlots = 0 } = {}) {
    this.whepUrl = whepUrl;
    this.token = token;
    this.videoSlots = videoSlots;
    this.resource = null;
    this.pc = null;
    this.control = null;
    this.onOpen = () => {};
    this.onControl = (message) => {};
    this.onData = (buffer) => {};
    this.onClose = (reason) => {};
    this.stats = { frames: 0, reliable: 0, lossy: 0 };
  }

  /** Connects; resolves once the control channel is open. Rejects with the edge's refusal. */
  async open() {
    const offer = await this.newPeer();
    const headers = { "Content-Type": "application/sdp" };
    if (this.token !== undefined) headers.Authorization = `Bearer ${this.token}`;
    const response = await fetch(this.whepUrl, { method: "POST", headers, body: offer });
    if (response.status !== 201) throw new Error(`signaling refused: ${response.status} ${await response.text()}`);
    this.resource = new URL(response.headers.get("Location"), this.whepUrl).href;
    await this.pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    await this.opened;
  }

  /** Moves the session to a new peer connection (an ICE restart, docs/protocol.md 4.9). */
  async restart() {
    const old = this.pc;
    const offer = await this.newPeer();
    const response = await fetch(this.resource, { method: "PATCH", headers: { "Content-Type": "application/sdp" }, body: offer });
    if (response.status !== 200) throw new Error(`restart refused: ${response.status}`);
    await this.pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    old.close();
    await this.opened;
  }

  async newPeer() {
    const pc = new RTCPeerConnection();
    const channels = Object.fromEntries(CHANNELS.map(([label, options]) => [label, pc.createDataChannel(label, options)]));
    for (const channel of Object.values(channels)) channel.binaryType = "arraybuffer";
    for (const label of ["reliable", "lossy"]) {
      channels[label].onmessage = (event) => {
        if (this.pc !== pc) return;
        this.stats.frames += 1;
        this.stats[label] += 1;
        this.onData(event.data);
      };
    }
    channels.control.onmessage = (event) => { if (this.pc === pc) this.onControl(JSON.parse(event.data)); };
    channels.control.onclose = () => { if (this.pc === pc) this.onClose("control channel closed"); };
    pc.onconnectionstatechange = () => {
      if (this.pc === pc && pc.connectionState === "failed") this.onClose("connection failed");
    };
    for (let slot = 0; slot < this.videoSlots; slot++) pc.addTransceiver("video", { direction: "recvonly" });
    this.opened = new Promise((resolve) => { channels.control.onopen = () => { resolve(); this.onOpen(); }; });
    this.pc = pc;
    this.control = channels.control;
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    return pc.localDescription.sdp;
  }

  send(message) {
    if (this.control && this.control.readyState === "open") this.control.send(JSON.stringify(message));
  }

  /** The receiving track of a video slot, by the `mid` of a `track` message. */
  track(mid) {
    const transceiver = this.pc.getTransceivers().find((t) => t.mid === mid);
    return transceiver ? transceiver.receiver.track : null;
  }

  async close() {
    const resource = this.resource;
    this.resource = null;
    if (resource) await fetch(resource, { method: "DELETE" }).catch(() => undefined);
    if (this.pc) this.pc.close();
  }
}

// The edge takes no trickled candidates: the offer carries them all.
function iceGathered(pc, timeoutMs = 2000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { clearTimeout(timer); resolve(); };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") done(); });
  });
}
