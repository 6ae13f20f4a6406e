// The router's live dashboard: polls the admin API every second and draws what it says.
// The admin token comes from the URL fragment (#token=...) or the form, and is kept in
// sessionStorage for this tab only. Every value from the API is written as text, never as HTML.

const POLL_MS = 1000;
const POINTS = 60;
const MAX_LINES = 8;
const TOKEN_KEY = "switchboard-admin-token";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

const $ = (id) => document.getElementById(id);

const charts = {
  rates: { canvas: $("rates-chart"), legend: $("rates-legend"), series: new Map() },
  drops: { canvas: $("drops-chart"), legend: $("drops-legend"), series: new Map() },
};
const colors = new Map();

class ApiError extends Error {
  constructor(status, error) {
    super(error ? `${error.code}: ${error.message}` : `HTTP ${status}`);
    this.status = status;
  }
}

// ------------------------------------------------------------------ the API

function takeTokenFromFragment() {
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body && body.error);
  return body;
}

// ------------------------------------------------------------------ polling

async function poll() {
  try {
    const [stats, edges, topics, clients, cluster] = await Promise.all(
      ["/api/stats", "/api/edges", "/api/topics", "/api/clients", "/api/cluster"].map((path) => api(path)),
    );
    $("token-form").hidden = true;
    setStatus("live", "ok");
    showFigures(stats, topics.topics);
    showEdges(edges.edges);
    showTopics(topics.topics);
    showClients(clients.clients);
    showCluster(cluster);
    addSamples(topics.topics);
  } catch (error) {
    if (error.status === 401) {
      $("token-form").hidden = false;
      setStatus("an admin token is needed", "bad");
    } else {
      setStatus(`cannot reach the router: ${error.message}`, "bad");
    }
  }
  setTimeout(poll, POLL_MS);
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = kind;
}

function log(text) {
  const line = `${new Date().toLocaleTimeString()} ${text}\n`;
  $("log").textContent = (line + $("log").textContent).slice(0, 4000);
}

// ------------------------------------------------------------------ figures and tables

function showFigures(stats, topics) {
  $("edges-count").textContent = stats.edges;
  $("clients-count").textContent = stats.clients;
  $("topics-count").textContent = stats.topics;
  $("rate-total").textContent = sum(topics.map((t) => t.rate)).toFixed(1);
  $("drops-total").textContent = sum(topics.map((t) => t.drop_rate)).toFixed(1);
  $("delivered-total").textContent = stats.edge_delivered;
}

function sum(values) {
  return values.reduce((total, value) => total + value, 0);
}

function fillTable(id, rows, makeRow) {
  const body = $(id).tBodies[0];
  body.replaceChildren(...rows.map(makeRow));
}

function row(cells, data = {}) {
  const tr = document.createElement("tr");
  Object.assign(tr.dataset, data);
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) {
      td.append(cell);
    } else if (typeof cell === "number") {
      td.className = "num";
      td.textContent = Number.isInteger(cell) ? cell : cell.toFixed(1);
    } else {
      td.textContent = cell === null || cell === undefined ? "–" : cell;
    }
    tr.append(td);
  }
  return tr;
}

function showEdges(edges) {
  fillTable("edges", edges, (e) => {
    const tr = row(
      [e.edge_id, e.protocol, e.health, e.clients, e.topics, `${e.silent_for.toFixed(1)} s ago`,
       e.delivered, e.queued_messages, e.drops === null ? null : sum(Object.values(e.drops))],
      { edge: e.edge_id },
    );
    if (e.health !== "ok") tr.cells[2].className = "late";
    return tr;
  });
}

function showTopics(topics) {
  fillTable("topics", topics, (t) => {
    const policy = t.policy.kind + (t.policy.max_rate ? ` ${t.policy.max_rate}/s` : "");
    const tr = row([t.topic, t.subscribers, t.rate, t.drop_rate, t.messages, policy], { topic: t.topic });
    tr.cells[2].classList.add("rate");
    tr.cells[3].classList.add("drop-rate");
    return tr;
  });
}

function showClients(clients) {
  const now = Date.now() / 1000;
  fillTable("clients", clients, (c) => {
    const kick = document.createElement("button");
    kick.className = "kick";
    kick.textContent = "kick";
    kick.addEventListener("click", () => kickClient(c.client_id, kick));
    const since = `${Math.max(0, Math.round(now - c.connected_at))} s ago`;
    return row(
      [c.client_id, c.edge_id, c.protocol, c.remote, c.user, c.subscriptions.join(", "),
       c.queued_messages, c.drops, since, kick],
      { client: c.client_id },
    );
  });
}

// Outside cluster mode the API answers {"cluster": false} and the panel stays hidden.
function showCluster(cluster) {
  $("cluster").hidden = cluster.cluster !== true;
  if (cluster.cluster !== true) return;
  const redis = cluster.redis;
  $("cluster-redis").textContent =
    `${cluster.shard_count} shards, lease ${cluster.lease_time} s; Redis ${redis.where}: ` +
    `${redis.available ? "reachable" : "not reachable"}, ${redis.unavailable_rounds} rounds failed`;
  $("cluster-redis").className = redis.available ? "" : "late";
  $("cluster-changes").textContent = "shard changes here: " +
    Object.entries(cluster.changes).map(([change, count]) => `${change.replace("_", " ")} ${count}`).join(", ");
  fillTable("cluster-routers", cluster.routers, (r) => {
    const name = r.router_id + (r.router_id === cluster.router_id ? " (this)" : "");
    const tr = row([name, r.live ? "yes" : "no", r.shards_served, r.endpoints.control, r.endpoints.xpub],
      { router: r.router_id });
    tr.cells[2].classList.add("served");
    if (!r.live) tr.cells[1].className = "late";
    return tr;
  });
  fillTable("cluster-shards", cluster.shards, (s) => {
    let left = s.lease_ms_left === null ? null : `${(s.lease_ms_left / 1000).toFixed(1)} s`;
    if (s.degraded) left = `${left ?? "–"} degraded`;
    const tr = row([s.shard, s.owner, s.token, left], { shard: s.shard });
    tr.cells[1].classList.add("owner");
    if (s.owner === null) tr.cells[1].classList.add("late");
    if (s.degraded) tr.cells[3].className = "late";
    return tr;
  });
}

async function kickClient(clientId, button) {
  button.disabled = true;
  try {
    await api(`/api/clients/${encodeURIComponent(clientId)}/kick`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    log(`kicked ${clientId}`);
  } catch (error) {
    log(`could not kick ${clientId}: ${error.message}`);
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ charts

function addSamples(topics) {
  for (const [chart, field] of [[charts.rates, "rate"], [charts.drops, "drop_rate"]]) {
    const now = new Map(topics.map((t) => [t.topic, t[field]]));
    for (const name of now.keys()) {
      if (!chart.series.has(name)) chart.series.set(name, []);
    }
    for (const [name, values] of chart.series) {
      values.push(now.get(name) ?? 0);
      if (values.length > POINTS) values.shift();
      if (!now.has(name) && values.every((v) => v === 0)) chart.series.delete(name);
    }
    chart.canvas.dataset.samples = Number(chart.canvas.dataset.samples || 0) + 1;
    drawChart(chart);
  }
}

function colorOf(topic) {
  if (!colors.has(topic)) colors.set(topic, COLORS[colors.size % COLORS.length]);
  return colors.get(topic);
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * step).find((top) => top >= value);
}

function drawChart(chart) {
  const { canvas, legend, series } = chart;
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const shown = [...series.entries()]
    .sort((a, b) => Math.max(...b[1]) - Math.max(...a[1]))
    .slice(0, MAX_LINES);
  const top = niceMax(Math.max(0, ...shown.flatMap(([, values]) => values)));
  const left = 40;
  context.clearRect(0, 0, width, height);
  context.font = "11px system-ui, sans-serif";
  context.fillStyle = "#666";
  context.strokeStyle = "#eee";
  for (let i = 0; i <= 4; i += 1) {
    const y = height - 10 - (i / 4) * (height - 20);
    context.beginPath();
    context.moveTo(left, y);
    context.lineTo(width, y);
    context.stroke();
    context.fillText(String(+(top * i / 4).toPrecision(3)), 2, y + 4);
  }
  for (const [name, values] of shown) {
    context.strokeStyle = colorOf(name);
    context.lineWidth = 2;
    context.beginPath();
    values.forEach((value, index) => {
      const x = left + ((index + POINTS - values.length) / (POINTS - 1)) * (width - left);
      const y = height - 10 - (value / top) * (height - 20);
      if (index === 0) context.moveTo(x, y);
      else context.lineTo(x, y);
    });
    context.stroke();
  }
  legend.replaceChildren(...shown.map(([name]) => legendItem(name)));
}

function legendItem(name) {
  const item = document.createElement("span");
  const swatch = document.createElement("i");
  swatch.style.background = colorOf(name);
  item.append(swatch, name);
  return item;
}

// ------------------------------------------------------------------ start

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  setStatus("connecting…", "");
});
takeTokenFromFragment();
poll();
