// A DocExtract webhook receiver in Express, following the customer docs.
//
//   npm ci
//   WEBHOOK_SECRET=whsec_... node server.js          # PORT (3000) and HOST (127.0.0.1) optional
//
// It checks X-DocExtract-Signature over the raw body before anything else,
// handles each event once (keyed on X-DocExtract-Event-Id, which is the same on
// every retry), answers 200 quickly, and logs event types it does not know.
'use strict';

const crypto = require('crypto');
const express = require('express');

const WEBHOOK_SECRET = process.env.WEBHOOK_SECRET || '';

// Event ids already handled. In production use a table with the event id as primary key.
// Node runs one request handler at a time, and nothing awaits between the check and the add.
const processedEvents = new Set();

function log(...args) {
  console.log(new Date().toISOString(), 'express-receiver', ...args);
}

const app = express();

// The raw body, exactly as signed. Events can be up to 256 KiB: raise express's 100 kB default.
app.post('/webhooks/docextract', express.raw({ type: 'application/json', limit: '1mb' }), (req, res) => {
  // Verify the signature over the raw bytes, before parsing anything.
  const signature = req.get('X-DocExtract-Signature') || '';
  const payload = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
  if (!verifyWebhookSignature(payload, signature, WEBHOOK_SECRET)) {
    log('rejected: invalid signature');
    return res.status(401).send('Invalid signature');
  }

  const eventId = req.get('X-DocExtract-Event-Id') || '';
  let event;
  try {
    event = JSON.parse(payload.toString('utf8'));
  } catch (err) {
    return res.status(400).send('Invalid JSON');
  }
  if (!eventId) {
    return res.status(400).send('Missing X-DocExtract-Event-Id');
  }

  // Idempotency: the same event arrives again when our 200 got lost; handle it once.
  if (processedEvents.has(eventId)) {
    log(`duplicate ${eventId} skipped`);
    return res.status(200).send('OK');
  }
  processedEvents.add(eventId);
  try {
    handleWebhookEvent(eventId, event);
  } catch (err) {
    processedEvents.delete(eventId);
    log(`handling ${eventId} failed; DocExtract will retry:`, err);
    return res.status(500).send('Handler failed');
  }

  // Respond quickly: DocExtract waits 5 seconds. Queue slow work instead of doing it here.
  return res.status(200).send('OK');
});

function verifyWebhookSignature(payload, signature, secret) {
  const expectedSignature = crypto.createHmac('sha256', secret).update(payload).digest('hex');
  const received = Buffer.from(signature);
  const expected = Buffer.from(expectedSignature);
  // timingSafeEqual throws when the lengths differ: a malformed header is just a bad signature.
  return received.length === expected.length && crypto.timingSafeEqual(received, expected);
}

function handleWebhookEvent(eventId, event) {
  const data = event.data || {};
  switch (event.event) {
    case 'job.completed':
      log(`handled job.completed ${eventId}: job ${data.id} extracted ${Object.keys(data.extracted_data).sort()}`);
      break;
    case 'job.failed':
      log(`handled job.failed ${eventId}: job ${data.id} ${data.error_details.code}: ${data.error_details.message}`);
      break;
    case 'credits.low_balance':
      log(`handled credits.low_balance ${eventId}: ${data.current_balance} credits left, ` +
          `about ${data.estimated_jobs_remaining} jobs`);
      break;
    case 'credits.depleted':
      log(`handled credits.depleted ${eventId}: depleted at ${data.depleted_at}, ${data.jobs_queued} jobs queued`);
      break;
    case 'webhook.test':
      log(`handled webhook.test ${eventId}: ${data.message}`);
      break;
    default:
      log(`Unknown event type: ${event.event} (${eventId})`);
  }
}

if (!WEBHOOK_SECRET) {
  console.error("set WEBHOOK_SECRET to the endpoint's whsec_ secret");
  process.exit(1);
}
const server = app.listen(Number(process.env.PORT || 3000), process.env.HOST || '127.0.0.1', () => {
  const { address, port } = server.address();
  log(`listening on http://${address}:${port}/webhooks/docextract`);
});
process.on('SIGTERM', () => {
  // Finish requests in progress, then exit; idle keep-alive connections need not wait.
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
