// The Switchboard viewer: a client of switchboard.v1 (docs/protocol.md) over WebSocket or, with
// ?mode=webrtc, over WebRTC data channels, the camera then arriving as a video track.
const SUBPROTOCOL = "switchboard.v1";
const DATA_FRAME = 0x01;
const HEADER_BYTES = 14;
const PLOT_POINTS = 240;
const CAMERA_WINDOW = 2;       // camera frames in flight before the viewer acknowledges them

const params = new URLSearchParams(location.search);
const cameraTopic = params.get("camera") || "/demo/camera";
const telemetryTopic = params.get("telemetry") || "/demo/telemetry";
const mode = params.get("mode") === "webrtc" ? "webrtc" : "websocket";
// A session token comes in the fragment (#token=...), which the browser never sends to a server,
// so it stays out of request lines, proxy logs and Referer headers.
const token = new URLSearchParams(location.hash.slice(1)).get("token") || undefined;
const $ = (id) => document.getElementById(id);

// ?ws= and ?whep= may only name this page's own host and port, or an origin the edge lists as a
// viewer origin (--viewer-origin, in the page's switchboard-viewer-origins meta element): a link
// must not point the viewer, and the token it may hold, at any other server. Any other value is
// ignored, the page says so, and the default is used.
const viewerOrigins = new Set(
  (document.querySelector('meta[name="switchboard-viewer-origins"]')?.content || "").split(" ").filter(Boolean),
);
const HTTP_SCHEMES = { "ws:": "http:", "wss:": "https:" };

function allowedParam(name, fallback) {
  const value = params.get(name);
  if (!value) return fallback;
  try {
    const url = new URL(value, location.href);
    if (url.host === location.host) return value;
    if (viewerOrigins.has(`${HTTP_SCHEMES[url.protocol] || url.protocol}//${url.host}`)) {
      log(`${name}=${value}: a viewer origin of this edge`);
      return value;
    }
  } catch (error) {
    // not a URL: ignored below
  }
  log(`ignored ${name}=${value}: not this page's host nor a viewer origin of this edge`);
  return fallback;
}

const state = {
  transport: null,             // {send(message), close()} of the current connection
  reconnecting: false,
  batches: false,              // binary messages are batches of frames (docs/protocol.md 4.4.5)
  nextId: 1,
  pending: new Map(),          // request id -> {op, topic}
  channels: new Map(),         // channel id -> subscription
  byTopic: new Map(),          // topic -> subscription
  received: 0,
  dropped: 0,
  frames: 0,
  samples: 0,
  speeds: [],
  frameUrl: null,
};

function log(text) {
  const line = `${new Date().toISOString().slice(11, 23)} ${text}\n`;
  $("log").textContent = (line + $("log").textContent).slice(0, 4000);
}

function send(message) {
  if (state.transport) state.transport.send(message);
}

function request(op, topic, options = {}) {
  const id = state.nextId++;
  state.pending.set(id, { op, topic });
  send({ op, id, topic, ...options });
}

function connect() {
  state.reconnecting = false;
  if (mode === "webrtc") connectWebRtc();
  else connectWebSocket();
}

function reconnect(why) {
  if (state.reconnecting) return;
  state.reconnecting = true;
  setStatus(`${why} — reconnecting`, false);
  if (state.transport) state.transport.close();
  state.transport = null;
  state.channels.clear();
  setTimeout(connect, 1000);
}

function connectWebSocket() {
  const url = allowedParam("ws", `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`);
  const socket = new WebSocket(url, SUBPROTOCOL);
  socket.binaryType = "arraybuffer";
  state.transport = {
    send: (message) => { if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message)); },
    close: () => socket.close(),
  };
  socket.onopen = () => send({ op: "connect", batch: true, ...(token === undefined ? {} : { token }) });
  socket.onmessage = (event) => {
    if (typeof event.data === "string") onControl(JSON.parse(event.data));
    else if (state.batches) onBatch(event.data);
    else onData(event.data);
  };
  socket.onclose = (event) => reconnect(`closed (${event.code})`);
}

// The edge that served the page (or ?whep= on its host or a viewer origin); the edge sends
// `connected` itself. The client module always comes from the page's own origin.
async function connectWebRtc() {
  const whep = allowedParam("whep", `${location.origin}/whep`);
  try {
    const { RtcTransport } = await import("./rtc-client.js");
    const transport = new RtcTransport(whep, { token, videoSlots: 1 });
    transport.onControl = onControl;
    transport.onData = onData;
    transport.onClose = (why) => { if (state.transport === transport) reconnect(why); };
    state.transport = transport;
    await transport.open();
  } catch (error) {
    reconnect(String(error.message || error));
  }
}

function setStatus(text, ok) {
  $("status").textContent = text;
  $("status").className = ok ? "ok" : "bad";
}

function onControl(message) {
  switch (message.op) {
    case "connected": {
      state.batches = message.batch === true;
      $("client-id").textContent = message.client_id;
      setStatus("connected", true);
      const topics = new Set([cameraTopic, telemetryTopic, ...state.byTopic.keys()]);
      state.byTopic.clear();
      for (const topic of topics) {
        const windowed = topic === cameraTopic && mode === "websocket";
        request("subscribe", topic, windowed ? { window: CAMERA_WINDOW } : {});
      }
      break;
    }
    case "subscribed": {
      state.pending.delete(message.id);
      const sub = { topic: message.topic, channel: message.channel, last: null, received: 0, dropped: 0 };
      state.channels.set(message.channel, sub);
      state.byTopic.set(message.topic, sub);
      log(`subscribed ${message.topic} on channel ${message.channel} (${message.policy})`);
      renderSubscriptions();
      break;
    }
    case "unsubscribed": {
      state.pending.delete(message.id);
      const sub = state.byTopic.get(message.topic);
      if (sub) state.channels.delete(sub.channel);
      state.byTopic.delete(message.topic);
      log(`unsubscribed ${message.topic}`);
      renderSubscriptions();
      break;
    }
    case "track":
      if (message.topic === cameraTopic) showVideo(state.transport.track(message.mid));
      break;
    case "error":
      state.pending.delete(message.id);
      log(`error ${message.code}: ${message.message}`);
      break;
    case "closing":
      log(`edge closing: ${message.reason}`);
      break;
  }
}

// A batch: records of a 4-byte big-endian length and one frame, to the end of the message.
function onBatch(buffer) {
  const view = new DataView(buffer);
  for (let at = 0; at + 4 <= buffer.byteLength; ) {
    const length = view.getUint32(at);
    onData(buffer.slice(at + 4, at + 4 + length));
    at += 4 + length;
  }
}

function onData(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < HEADER_BYTES || view.getUint8(0) !== DATA_FRAME) return;
  const channel = view.getUint32(2);
  const offset = Number(view.getBigUint64(6));
  const sub = state.channels.get(channel);
  if (!sub) return;
  if (sub.last !== null && offset > sub.last + 1) {
    sub.dropped += offset - sub.last - 1;
    state.dropped += offset - sub.last - 1;
  }
  sub.last = offset;
  sub.received += 1;
  state.received += 1;
  const payload = new Uint8Array(buffer, HEADER_BYTES);
  if (sub.topic === cameraTopic) showFrame(payload).finally(() => send({ op: "ack", channel, offset }));
  else if (sub.topic === telemetryTopic) showTelemetry(payload);
}

// Resolves once the frame is decoded, so the edge sends the next one only when it can be shown:
// a slow browser gets the newest frame, never a backlog.
function showFrame(payload) {
  if (state.frameUrl) URL.revokeObjectURL(state.frameUrl);
  state.frameUrl = URL.createObjectURL(new Blob([payload], { type: "image/jpeg" }));
  const image = $("frame");
  image.src = state.frameUrl;
  state.frames += 1;
  return image.decode().catch(() => undefined);
}

// WebRTC mode: the edge sends the camera topic as a video track; frames are counted as shown.
function showVideo(track) {
  const video = $("video");
  video.srcObject = new MediaStream([track]);
  video.hidden = false;
  $("frame").hidden = true;
  const counted = video.srcObject;
  const count = () => {
    if (video.srcObject !== counted) return;
    const sub = state.byTopic.get(cameraTopic);
    if (sub) {
      sub.received += 1;
      state.frames += 1;
    }
    video.requestVideoFrameCallback(count);
  };
  video.requestVideoFrameCallback(count);
  video.play().catch(() => undefined);
}

function showTelemetry(payload) {
  const sample = JSON.parse(new TextDecoder().decode(payload));
  state.samples += 1;
  state.speeds.push(sample.speed);
  if (state.speeds.length > PLOT_POINTS) state.speeds.shift();
  if (typeof sample.time === "number") state.latency = Date.now() - sample.time * 1000;
  $("telemetry-last").textContent = `seq ${sample.seq}, speed ${sample.speed}`;
}

function drawPlot() {
  const canvas = $("plot");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.strokeStyle = "#1967d2";
  context.beginPath();
  state.speeds.forEach((speed, index) => {
    const x = (index / PLOT_POINTS) * canvas.width;
    const y = canvas.height - (speed / 10) * canvas.height;
    if (index === 0) context.moveTo(x, y);
    else context.lineTo(x, y);
  });
  context.stroke();
}

function renderCounters() {
  $("received").textContent = state.received;
  $("dropped").textContent = state.dropped;
  $("frames-count").textContent = state.frames;
  $("telemetry-count").textContent = state.samples;
  if (state.latency !== undefined) $("latency").textContent = state.latency.toFixed(1);
  for (const sub of state.byTopic.values()) {
    const row = document.querySelector(`tr[data-topic="${CSS.escape(sub.topic)}"]`);
    if (row) {
      row.children[2].textContent = sub.received;
      row.children[3].textContent = sub.dropped;
    }
  }
}

function renderSubscriptions() {
  const table = $("subscriptions");
  for (const row of [...table.querySelectorAll("tr[data-topic]")]) row.remove();
  for (const sub of state.byTopic.values()) {
    const row = table.insertRow();
    row.dataset.topic = sub.topic;
    for (const value of [sub.topic, sub.channel, sub.received, sub.dropped]) {
      row.insertCell().textContent = value;
    }
    const button = document.createElement("button");
    button.textContent = "unsubscribe";
    button.onclick = () => request("unsubscribe", sub.topic);
    row.insertCell().append(button);
  }
}

$("subscribe-form").onsubmit = (event) => {
  event.preventDefault();
  request("subscribe", $("topic").value.trim());
};
$("unsubscribe").onclick = () => request("unsubscribe", $("topic").value.trim());
$("camera-topic").textContent = cameraTopic;
for (const link of document.querySelectorAll("#modes a")) {
  const linked = new URLSearchParams(params);
  linked.set("mode", link.dataset.mode);
  link.href = `?${linked}`;
  link.classList.toggle("current", link.dataset.mode === mode);
}
$("telemetry-topic").textContent = telemetryTopic;

function frameLoop() {
  renderCounters();
  drawPlot();
  requestAnimationFrame(frameLoop);
}
setInterval(renderCounters, 250);
requestAnimationFrame(frameLoop);
connect();
