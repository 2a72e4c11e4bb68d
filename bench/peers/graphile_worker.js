// graphile-worker running the benchmark's signed-webhook job, one worker process per run.
//
//   node graphile_worker.js migrate URL         install graphile-worker's schema
//   node graphile_worker.js run URL SETTINGS    work until SIGTERM; SETTINGS is the JSON of
//                                               preset.worker (bench/queues.py, GRAPHILE_WORKER)
//
// The task `deliver` does what bench/signed_post.py does in Python and the deliverer does
// for real: the hex HMAC-SHA256 of the raw body keyed with the endpoint secret in
// X-DocExtract-Signature, the Standard Webhooks headers (v1, base64 HMAC-SHA256 of
// "{id}.{timestamp}.{body}" keyed with the base64-decoded part of the whsec_ secret),
// a POST through a keep-alive agent with a 5 s timeout, and a failure unless 2xx.
// Only warnings and errors are logged (the deliverer logs no line per success either).
// It prints "ready" once its pool listens for new jobs.
"use strict";

const crypto = require("node:crypto");
const http = require("node:http");
const { EventEmitter } = require("node:events");
const { run, runMigrations, Logger } = require("graphile-worker");

const TIMEOUT_MS = 5000;
const USER_AGENT = "DocExtract-Webhooks/0.1.0";

const quiet = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`${level}: ${message}`);
});

function standardKey(secret) {
  return secret.startsWith("whsec_") ? Buffer.from(secret.slice(6), "base64") : Buffer.from(secret);
}

function headers(job, body) {
  const timestamp = Math.floor(Date.now() / 1000);
  const standard = crypto.createHmac("sha256", standardKey(job.secret))
    .update(`${job.event_id}.${timestamp}.`).update(body).digest("base64");
  return {
    "Content-Type": "application/json",
    "Content-Length": body.length,
    "User-Agent": USER_AGENT,
    "X-DocExtract-Signature": crypto.createHmac("sha256", job.secret).update(body).digest("hex"),
    "X-DocExtract-Event-Id": job.event_id,
    "X-DocExtract-Event-Type": job.event_type,
    "X-DocExtract-Delivery-Id": job.delivery_id,
    "X-DocExtract-Delivery-Attempt": "1",
    "X-DocExtract-Timestamp": String(timestamp),
    "webhook-id": job.event_id,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": `v1,${standard}`,
  };
}

function deliverWith(agent) {
  return (job) => new Promise((resolve, reject) => {
    const body = Buffer.from(job.body, "utf8");
    const request = http.request(job.url, { method: "POST", agent, headers: headers(job, body), timeout: TIMEOUT_MS },
      (response) => {
        response.resume();
        response.on("end", () => (response.statusCode >= 200 && response.statusCode < 300
          ? resolve() : reject(new Error(`the receiver answered ${response.statusCode}`))));
      });
    request.on("timeout", () => request.destroy(new Error("timed out")));
    request.on("error", reject);
    request.end(body);
  });
}

async function main([command, connectionString, settings]) {
  if (command === "migrate") {
    await runMigrations({ connectionString, logger: quiet });
    return;
  }
  const worker = JSON.parse(settings);
  const agent = new http.Agent({ keepAlive: true, maxSockets: worker.concurrentJobs });
  const events = new EventEmitter();
  events.once("pool:listen:success", () => console.log("ready"));
  const runner = await run({
    logger: quiet,
    events,
    taskList: { deliver: deliverWith(agent) },
    preset: { worker: { ...worker, connectionString } },
  });
  await runner.promise;
}

main(process.argv.slice(2)).catch((error) => {
  console.error(error);
  process.exit(1);
});
