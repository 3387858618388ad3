// The Node.js client against a real running service:
//   RAYDEMUCS_URL=http://127.0.0.1:8000 [RAYDEMUCS_API_KEY=...] node --test clients/node/test/
// (tests/e2e/test_web_clients.py starts one and runs this). Optional: RAYDEMUCS_TEST_OUT (where the
// stems are downloaded, for the caller to compare). webhook-vectors.json: deliveries signed by
// the `standardwebhooks` package (PyPI), checked against it by tests/e2e/test_web_clients.py.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, test } from "node:test";

import { createClient, RaydemucsError, verifyWebhook } from "../raydemucs.mjs";

const { RAYDEMUCS_URL: url, RAYDEMUCS_API_KEY: apiKey } = process.env;
const run = Date.now().toString(36);  // (project, file id) is a task's key: new ones each run

/** A 16-bit stereo WAV of two tones, `seconds` long. */
function wav(seconds, rate = 44100) {
  const frames = Math.round(seconds * rate);
  const data = Buffer.alloc(frames * 4);
  for (let i = 0; i < frames; i += 1) {
    data.writeInt16LE(Math.round(8000 * Math.sin((2 * Math.PI * 220 * i) / rate)), 4 * i);
    data.writeInt16LE(Math.round(8000 * Math.sin((2 * Math.PI * 330 * i) / rate)), 4 * i + 2);
  }
  const head = Buffer.alloc(44);
  head.write("RIFF", 0); head.writeUInt32LE(36 + data.length, 4); head.write("WAVEfmt ", 8);
  head.writeUInt32LE(16, 16); head.writeUInt16LE(1, 20); head.writeUInt16LE(2, 22);
  head.writeUInt32LE(rate, 24); head.writeUInt32LE(rate * 4, 28); head.writeUInt16LE(4, 32);
  head.writeUInt16LE(16, 34); head.write("data", 36); head.writeUInt32LE(data.length, 40);
  return Buffer.concat([head, data]);
}

async function rejects(promise, { status, type, words }) {
  const error = await promise.then(() => null, (caught) => caught);
  assert.ok(error instanceof RaydemucsError, `expected a RaydemucsError, got ${error}`);
  if (status !== undefined) assert.equal(error.status, status);
  assert.equal(error.type, type);
  if (words) assert.match(error.message, words);
  assert.ok(!error.message.includes("\n"), "one line");
  return error;
}

describe("against the service at RAYDEMUCS_URL", () => {
  let client, folder, song, long;

  before(async () => {
    assert.ok(url, "set RAYDEMUCS_URL to a running raydemucs HTTP API (see clients/node/README.md)");
    client = createClient({ url, apiKey });
    folder = await mkdtemp(join(tmpdir(), "raydemucs-node-"));
    song = join(folder, "Node Song.wav");
    long = join(folder, "long.wav");
    await writeFile(song, wav(1.5));
    await writeFile(long, wav(8));
  });

  test("addTask, waitFor, download: the old workerManager's job", async () => {
    const outputDir = process.env.RAYDEMUCS_TEST_OUT ?? join(folder, "out");
    const id = await client.addTask({ fileId: "file123", inputPath: song, outputDir,
                                      projectName: `My Project ${run}`, priority: "high" });
    assert.match(id, /^[0-9a-f]{16}$/);
    const seen = [];
    const done = await client.waitFor(id, { onProgress: (task) => seen.push(task), timeoutMs: 120_000 });
    assert.equal(done.state, "succeeded");
    assert.equal(seen.at(-1).state, "succeeded");
    const progress = seen.map((task) => task.progress);
    assert.deepEqual(progress, [...progress].sort((a, b) => a - b));
    assert.equal(done.priority, "high");
    const written = await client.download(id);
    assert.deepEqual(Object.keys(written).sort(), ["bass", "drums", "other", "vocals"]);
    for (const [stem, path] of Object.entries(written)) {
      assert.equal(path, join(outputDir, `My Project ${run}`, "file123", `${stem}.wav`));
      const served = await fetch(`${url}/v1/tasks/${id}/stems/${stem}`,
                                 { headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {} });
      assert.deepEqual(await readFile(path), Buffer.from(await served.arrayBuffer()));
    }
  });

  test("getTask and getStatus", async () => {
    const id = await client.addTask({ inputPath: song, projectName: `status ${run}`, twoStems: "vocals" });
    const task = await client.getTask(id);
    assert.equal(task.file_id, "Node Song");
    assert.equal(task.options.two_stems, "vocals");
    await client.waitFor(id);
    assert.deepEqual(Object.keys((await client.getTask(id)).outputs).sort(), ["no_vocals", "vocals"]);
    const status = await client.getStatus();
    assert.ok(status.workers.length >= 1);
    assert.ok(status.queue.succeeded >= 1);
    assert.equal(typeof status.queued_by_priority, "object");
  });

  test("waitFor on more tasks at once than the key may hold event streams", async () => {
    const ids = [];  // tests/e2e/test_web_clients.py's service lets a key hold 3 streams
    for (let i = 0; i < 5; i += 1) {
      ids.push(await client.addTask({ inputPath: song, projectName: `many ${run}`, fileId: `m${i}` }));
    }
    const done = await Promise.all(ids.map((id) => client.waitFor(id, { timeoutMs: 120_000 })));
    assert.deepEqual(done.map((task) => task.state), Array(5).fill("succeeded"));
  });

  test("cancel: waitFor rejects with the cancelled task", async () => {
    const id = await client.addTask({ inputPath: long, projectName: `cancelled ${run}` });
    const cancelled = await client.cancel(id);
    assert.ok(["cancelled", "running"].includes(cancelled.state));
    const error = await rejects(client.waitFor(id, { timeoutMs: 60_000 }), { type: "TaskCancelled" });
    assert.equal(error.task.state, "cancelled");
    const again = await client.retry(id);
    assert.ok(["queued", "running"].includes(again.state));
    assert.equal((await client.waitFor(id)).state, "succeeded");
  });

  test("refusals are RaydemucsErrors with the server's one-line message", async () => {
    await rejects(client.addTask({ inputPath: join(folder, "missing.mp3") }),
                  { type: "InvalidInput", words: /missing\.mp3 cannot be read: ENOENT/ });
    await rejects(client.addTask({ inputPath: folder }), { type: "InvalidInput", words: /is not a regular file/ });
    await rejects(client.addTask({ inputPath: song, priority: "urgent" }),
                  { status: 422, type: "InvalidInput", words: /priority 'urgent' must be high, normal, low or 0-9/ });
    await rejects(client.getTask("0123456789abcdef"), { status: 404, type: "TaskNotFound" });
    await rejects(client.download("0123456789abcdef"), { type: "InvalidInput", words: /no directory given/ });
    if (apiKey) {
      await rejects(createClient({ url, apiKey: "rdk_wrong" }).getStatus(), { status: 401, type: "Unauthenticated" });
    }
    await rejects(createClient({ url: "http://127.0.0.1:9" }).getStatus(),
                  { type: "ServiceUnavailable", words: /unreachable/ });
    const slow = await client.addTask({ inputPath: long, projectName: `slow ${run}` });
    await rejects(client.waitFor(slow, { timeoutMs: 1 }), { type: "WaitTimedOut", words: /did not end within 1 ms/ });
    await client.cancel(slow);
  });

  test("shutdown: a waitFor still waiting rejects, later calls are refused, the task goes on", async () => {
    const closing = createClient({ url, apiKey });
    const id = await closing.addTask({ inputPath: long, projectName: `shutdown ${run}` });
    const waiting = closing.waitFor(id);
    await closing.shutdown();
    await rejects(waiting, { type: "ClientShutdown", words: /shut down/ });
    await rejects(closing.getTask(id), { type: "ClientShutdown" });
    assert.equal((await client.waitFor(id, { timeoutMs: 120_000 })).state, "succeeded");
  });
});

describe("verifyWebhook (Standard Webhooks)", () => {
  const key = Buffer.from("a 24-byte key for tests!");
  const secret = `whsec_${key.toString("base64")}`;
  const body = JSON.stringify({ type: "task.succeeded", data: { task_id: "0123456789abcdef" } });
  const now = 1_800_000_000;
  const sign = (id, timestamp, payload, withKey = key) =>
    `v1,${createHmac("sha256", withKey).update(`${id}.${timestamp}.${payload}`).digest("base64")}`;
  const headers = (overrides = {}) => ({ "webhook-id": "msg_1", "webhook-timestamp": String(now),
                                         "webhook-signature": sign("msg_1", now, body), ...overrides });
  const refused = (words, ...args) =>
    assert.throws(() => verifyWebhook(...args), (error) => error.type === "WebhookVerificationError" && words.test(error.message));

  test("a good delivery returns its payload: object or Headers, string or bytes", () => {
    assert.deepEqual(verifyWebhook(headers(), body, secret, { nowS: now }), JSON.parse(body));
    assert.deepEqual(verifyWebhook(new Headers(headers()), Buffer.from(body), secret, { nowS: now + 299 }), JSON.parse(body));
    const rotated = `v1,${Buffer.alloc(32).toString("base64")} ${sign("msg_1", now, body)}`;
    assert.deepEqual(verifyWebhook(headers({ "webhook-signature": rotated }), body, secret, { nowS: now }), JSON.parse(body));
    const shouted = Object.fromEntries(Object.entries(headers()).map(([k, v]) => [k.toUpperCase(), v]));
    assert.deepEqual(verifyWebhook(shouted, body, secret, { nowS: now }), JSON.parse(body));
  });

  test("anything else is refused", () => {
    refused(/no signature matches/, headers(), body.replace("succeeded", "failed"), secret, { nowS: now });
    refused(/no signature matches/, headers(), body, `whsec_${Buffer.from("another key").toString("base64")}`, { nowS: now });
    refused(/no signature matches/, headers({ "webhook-id": "msg_2" }), body, secret, { nowS: now });
    refused(/no signature matches/, headers({ "webhook-signature": sign("msg_1", now, body).replace("v1,", "v2,") }), body, secret, { nowS: now });
    refused(/more than 300 s from now/, headers(), body, secret, { nowS: now + 301 });
    refused(/more than 300 s from now/, headers(), body, secret, { nowS: now - 301 });
    refused(/not a number/, headers({ "webhook-timestamp": "soon" }), body, secret, { nowS: now });
    refused(/missing/, headers({ "webhook-signature": undefined }), body, secret, { nowS: now });
    refused(/secret is empty/, headers(), body, "whsec_", { nowS: now });
  });

  test("deliveries signed by the standardwebhooks package verify (webhook-vectors.json)", async () => {
    const vectors = JSON.parse(await readFile(new URL("webhook-vectors.json", import.meta.url), "utf8"));
    assert.ok(vectors.length >= 8);
    for (const vector of vectors) {
      const verify = () => verifyWebhook(vector.headers, vector.body, vector.secret, { nowS: vector.now_s });
      if (vector.valid) assert.deepEqual(verify(), JSON.parse(vector.body), vector.note);
      else assert.throws(verify, (error) => error.type === "WebhookVerificationError", vector.note);
    }
  });
});
