// raydemucs.mjs: a Node.js (18+) client of a raydemucs service's HTTP API, and the drop-in for
// the old `require('./demucs-server-worker.js')` workerManager (see README.md beside this file).
// One file, no dependencies: Node's own fetch, FormData, crypto and fs.

import { createHmac, timingSafeEqual } from "node:crypto";
import * as fs from "node:fs";
import { mkdir, readFile, rename, rm, stat } from "node:fs/promises";
import { basename, join, relative, resolve, isAbsolute } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const RENAMED = { fileId: "file_id", projectName: "project" };
const NOT_FIELDS = new Set(["inputPath", "outputDir"]);
const WEBHOOK_TOLERANCE_S = 5 * 60;
const RECONNECT_MS = 1000;
const POLL_MS = 2000;  // a task looked at while its key holds all its event streams

/** Raised for every refusal of the service (`status`, `type` and the server's one-line
 *  `message`), an unreachable service, a failed or cancelled task (`task`), and a webhook that
 *  does not verify (`type` "WebhookVerificationError"). */
export class RaydemucsError extends Error {
  constructor(message, { status = null, type = "Error", task = null } = {}) {
    super(message);
    this.name = "RaydemucsError";
    Object.assign(this, { status, type, task });
  }
}

async function errorOf(response) {
  const text = await response.text();
  try {
    const { error } = JSON.parse(text);
    return new RaydemucsError(error.message, { status: response.status, type: error.type });
  } catch {
    return new RaydemucsError(`HTTP ${response.status}: ${text.slice(0, 200)}`, { status: response.status });
  }
}

/** `fileId` -> `file_id`, `twoStems` -> `two_stems`: the API's field names. */
function fieldName(name) {
  return RENAMED[name] ?? name.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);
}

async function fileBlob(path) {
  if (fs.openAsBlob) return fs.openAsBlob(path);  // Node 19.8+: read as it is sent
  return new Blob([await readFile(path)]);
}

/** The server-sent events of a response, `{event, data}` each (data parsed as JSON). */
async function* serverEvents(body) {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    for (let end = buffer.search(/\r?\n\r?\n/); end >= 0; end = buffer.search(/\r?\n\r?\n/)) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      let event = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

function inside(root, ...names) {
  const path = resolve(root, ...names);
  const within = relative(resolve(root), path);
  if (!within || within.startsWith("..") || isAbsolute(within)) {
    throw new RaydemucsError(`refusing to write ${path}: outside ${root}`, { type: "InvalidInput" });
  }
  return path;
}

/**
 * A client of the service at `url` (default `$RAYDEMUCS_URL`, else http://127.0.0.1:8000),
 * with `apiKey` (default `$RAYDEMUCS_API_KEY`) sent as `Authorization: Bearer KEY`.
 */
export function createClient({ url = process.env.RAYDEMUCS_URL ?? "http://127.0.0.1:8000",
                               apiKey = process.env.RAYDEMUCS_API_KEY } = {}) {
  const base = url.replace(/\/+$/, "");
  const outputDirs = new Map();  // task id -> the outputDir its addTask named
  const closing = new AbortController();  // shutdown()
  const shutDown = () => new RaydemucsError("this raydemucs client was shut down", { type: "ClientShutdown" });

  async function call(path, { method = "GET", body, signal } = {}) {
    if (closing.signal.aborted) throw shutDown();
    let response;
    try {
      response = await fetch(`${base}${path}`, {
        method, body, signal, headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {} });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new RaydemucsError(`the raydemucs service at ${base} is unreachable (${error.cause?.message ?? error.message})`,
                               { type: "ServiceUnavailable" });
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  const json = async (path, options) => (await call(path, options)).json();
  const taskPath = (id, rest = "") => `/v1/tasks/${encodeURIComponent(id)}${rest}`;

  /** Upload `inputPath` and queue it; resolves with the task id once the service has it.
   *  `projectName`, `fileId` (default: the file's name without its extension), `priority`
   *  (high, normal, low or 0-9) and separation options (`model`, `twoStems`, `format`,
   *  `shifts`, ...) go with it; `outputDir` is where `download(id)` writes by default. */
  async function addTask({ inputPath, outputDir, ...fields }) {
    if (!inputPath) throw new RaydemucsError("addTask needs an inputPath", { type: "InvalidInput" });
    const form = new FormData();
    for (const [name, value] of Object.entries(fields)) {
      if (value != null && !NOT_FIELDS.has(name)) form.append(fieldName(name), String(value));
    }
    const info = await stat(inputPath).catch((error) => {
      throw new RaydemucsError(`input ${inputPath} cannot be read: ${error.code}`, { type: "InvalidInput" });
    });
    if (!info.isFile()) throw new RaydemucsError(`input ${inputPath} is not a regular file`, { type: "InvalidInput" });
    form.append("file", await fileBlob(inputPath), basename(inputPath));
    const task = await json("/v1/tasks", { method: "POST", body: form });
    if (outputDir) outputDirs.set(task.task_id, outputDir);
    return task.task_id;
  }

  /** The task once it succeeded; throws a RaydemucsError holding it when it failed or was
   *  cancelled; null while it runs. */
  function ended(id, task) {
    if (task.state === "succeeded") return task;
    if (!TERMINAL.has(task.state)) return null;
    const why = task.error ? `${task.error.type}: ${task.error.message}` : task.state;
    throw new RaydemucsError(`task ${id} ${task.state}: ${why}`,
                             { type: task.error?.type ?? "TaskCancelled", task });
  }

  /** Resolves with the task once it succeeded (rejects with a RaydemucsError holding `task`
   *  when it failed or was cancelled), following its server-sent events; `onProgress(task)`
   *  on every change. Reconnects if the stream drops; while the key holds every event stream
   *  it may (429), it looks at the task every POLL_MS instead; `timeoutMs` gives up. */
  async function waitFor(id, { onProgress, timeoutMs, signal } = {}) {
    const abort = new AbortController();
    const timer = timeoutMs ? setTimeout(() => abort.abort(), timeoutMs) : null;
    signal?.addEventListener("abort", () => abort.abort());
    closing.signal.addEventListener("abort", () => abort.abort());
    let last = null;
    const seen = (task) => {
      const text = JSON.stringify(task);
      if (text !== last) onProgress?.(task);
      last = text;
      return ended(id, task);
    };
    try {
      for (;;) {
        let pause = RECONNECT_MS;
        try {
          const response = await call(taskPath(id, "/events"), { signal: abort.signal });
          for await (const { data: task } of serverEvents(response.body)) {
            if (seen(task)) return task;
          }
        } catch (error) {
          if (signal?.aborted) throw error;
          if (closing.signal.aborted) throw shutDown();
          if (abort.signal.aborted) {
            throw new RaydemucsError(`task ${id} did not end within ${timeoutMs} ms`, { type: "WaitTimedOut" });
          }
          if (error instanceof RaydemucsError && error.status === 429 && !error.task) {
            const task = await json(taskPath(id), { signal: abort.signal }).catch(() => null);
            if (task && seen(task)) return task;
            pause = POLL_MS;
          } else if (error instanceof RaydemucsError && (error.task || error.type !== "ServiceUnavailable")) {
            throw error;
          }
        }
        await new Promise((done) => setTimeout(done, pause));
      }
    } finally {
      clearTimeout(timer);
    }
  }

  /** Write a succeeded task's stems under `dir/projectName/fileId/` (default dir: the
   *  `outputDir` given to addTask); resolves with `{stem: path}`. */
  async function download(id, dir = outputDirs.get(id)) {
    if (!dir) throw new RaydemucsError(`download(${id}, dir): no directory given`, { type: "InvalidInput" });
    const task = await json(taskPath(id));
    if (task.state !== "succeeded") {
      throw new RaydemucsError(`task ${id} is ${task.state}; its stems come when it succeeds`,
                               { type: "InvalidInput", task });
    }
    const folder = inside(dir, task.project, task.file_id);
    await mkdir(folder, { recursive: true });
    const written = {};
    for (const stem of Object.keys(task.outputs)) {
      const response = await call(taskPath(id, `/stems/${encodeURIComponent(stem)}`));
      const named = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") ?? "");
      const path = inside(folder, basename(named?.[1] ?? `${stem}.${task.options.format}`));
      const partial = `${path}.part`;
      try {
        await pipeline(Readable.fromWeb(response.body), fs.createWriteStream(partial));
        await rename(partial, path);
      } finally {
        await rm(partial, { force: true });
      }
      written[stem] = path;
    }
    return written;
  }

  return {
    addTask, waitFor, download,
    getTask: (id) => json(taskPath(id)),
    /** The service: queue counts by state and by priority, pools, workers (as `status --json`). */
    getStatus: () => json("/v1/status"),
    cancel: (id) => json(taskPath(id), { method: "DELETE" }),
    retry: (id) => json(taskPath(id, "/retry"), { method: "POST" }),
    /** The old workerManager's shutdown(), for a server closing: every waitFor still waiting
     *  rejects (type ClientShutdown) and later calls are refused. The service's tasks go on. */
    shutdown: async () => closing.abort(),
    verifyWebhook,
  };
}

function header(headers, name) {
  if (typeof headers?.get === "function") return headers.get(name);
  const found = Object.entries(headers ?? {}).find(([key]) => key.toLowerCase() === name);
  return Array.isArray(found?.[1]) ? found[1][0] : found?.[1];
}

/**
 * Check a webhook delivery as Standard Webhooks signs it: `webhook-signature` holds
 * `v1,<base64 HMAC-SHA256 of "webhook-id.webhook-timestamp.body">` under the secret
 * `whsec_<base64 key>`, and the timestamp is within five minutes of now. `headers`: a plain
 * object or a Headers; `body`: the raw body (string or bytes, before any JSON parsing).
 * Returns the parsed payload; throws a RaydemucsError (type WebhookVerificationError).
 */
export function verifyWebhook(headers, body, secret, { toleranceS = WEBHOOK_TOLERANCE_S, nowS } = {}) {
  const refuse = (why) => { throw new RaydemucsError(`webhook not verified: ${why}`, { type: "WebhookVerificationError" }); };
  const id = header(headers, "webhook-id");
  const timestamp = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");
  if (!id || !timestamp || !signatures) refuse("missing webhook-id, webhook-timestamp or webhook-signature");
  if (!/^\d+$/.test(timestamp)) refuse("webhook-timestamp is not a number of seconds");
  const now = nowS ?? Math.floor(Date.now() / 1000);
  if (Math.abs(now - Number(timestamp)) > toleranceS) refuse(`webhook-timestamp is more than ${toleranceS} s from now`);
  const key = Buffer.from(String(secret).replace(/^whsec_/, ""), "base64");
  if (!key.length) refuse("the secret is empty (expected whsec_<base64>)");
  const raw = typeof body === "string" ? Buffer.from(body) : Buffer.from(body);
  const expected = createHmac("sha256", key).update(`${id}.${timestamp}.`).update(raw).digest();
  const matches = signatures.split(" ").some((entry) => {
    const [version, signature] = entry.split(",", 2);
    const given = Buffer.from(signature ?? "", "base64");
    return version === "v1" && given.length === expected.length && timingSafeEqual(given, expected);
  });
  if (!matches) refuse("no signature matches");
  return JSON.parse(raw.toString("utf8"));
}
