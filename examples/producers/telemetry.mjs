// Publishes JSON telemetry to a Switchboard router.
// Install: npm install (in this folder)   Run: node telemetry.mjs [endpoint] [topic] [count]
// Curve: set SWITCHBOARD_CURVE_ROUTER_KEY, SWITCHBOARD_CURVE_PUBLIC_KEY and SWITCHBOARD_CURVE_SECRET_KEY
// to the router's public key and this producer's key pair, in Z85 (docs/security.md).
import * as zmq from "zeromq";

const [endpoint = "tcp://127.0.0.1:7750", topic = "/robot/telemetry", count = "100"] =
  process.argv.slice(2);
const env = process.env;
const curve = env.SWITCHBOARD_CURVE_ROUTER_KEY
  ? {
      curveServerKey: env.SWITCHBOARD_CURVE_ROUTER_KEY,
      curvePublicKey: env.SWITCHBOARD_CURVE_PUBLIC_KEY,
      curveSecretKey: env.SWITCHBOARD_CURVE_SECRET_KEY,
    }
  : {};
const sock = new zmq.Push({ linger: 1000, ...curve });
sock.connect(endpoint);

// The optional header frame, a msgpack map {"content_type": "application/json"} encoded by hand.
const contentType = Buffer.from("application/json");
const header = Buffer.concat([
  Buffer.from([0x81, 0xa0 | 12]), Buffer.from("content_type"),
  Buffer.from([0xa0 | contentType.length]), contentType,
]);

for (let seq = 0; seq < Number(count); seq++) {
  const payload = JSON.stringify({ seq, lang: "js", speed: seq * 0.5 });
  await sock.send([topic, header, payload]);
  await new Promise((resolve) => setTimeout(resolve, 50));
}
sock.close();
