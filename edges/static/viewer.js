// The Switchboard viewer: a client of the edge's WebSocket protocol (docs/protocol.md).
const SUBPROTOCOL = "switchboard.v1";
const DATA_FRAME = 0x01;
const HEADER_BYTES = 14;
const PLOT_POINTS = 240;
const CAMERA_WINDOW = 2;       // camera frames in flight before the viewer acknowledges them

const params = new URLSearchParams(location.search);
const cameraTopic = params.get("camera") || "/demo/camera";
const telemetryTopic = params.get("telemetry") || "/demo/telemetry";
const $ = (id) => document.getElementById(id);

const state = {
  socket: null,
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
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(message));
  }
}

function request(op, topic, options = {}) {
  const id = state.nextId++;
  state.pending.set(id, { op, topic });
  send({ op, id, topic, ...options });
}

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  const socket = new WebSocket(url, SUBPROTOCOL);
  socket.binaryType = "arraybuffer";
  state.socket = socket;
  socket.onopen = () => send({ op: "connect" });
  socket.onmessage = (event) => {
    if (typeof event.data === "string") onControl(JSON.parse(event.data));
    else onData(event.data);
  };
  socket.onclose = (event) => {
    setStatus(`closed (${event.code}) — reconnecting`, false);
    state.channels.clear();
    setTimeout(connect, 1000);
  };
}

function setStatus(text, ok) {
  $("status").textContent = text;
  $("status").className = ok ? "ok" : "bad";
}

function onControl(message) {
  switch (message.op) {
    case "connected": {
      $("client-id").textContent = message.client_id;
      setStatus("connected", true);
      const topics = new Set([cameraTopic, telemetryTopic, ...state.byTopic.keys()]);
      state.byTopic.clear();
      for (const topic of topics) {
        request("subscribe", topic, topic === cameraTopic ? { window: CAMERA_WINDOW } : {});
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
    case "error":
      state.pending.delete(message.id);
      log(`error ${message.code}: ${message.message}`);
      break;
    case "closing":
      log(`edge closing: ${message.reason}`);
      break;
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
$("telemetry-topic").textContent = telemetryTopic;

function frameLoop() {
  renderCounters();
  drawPlot();
  requestAnimationFrame(frameLoop);
}
setInterval(renderCounters, 250);
requestAnimationFrame(frameLoop);
connect();
