// The service's /v1 API as the page calls it: the API key (kept in this tab's session storage),
// JSON requests, uploads with progress, and server-sent events read with fetch (an EventSource
// cannot send the key's header, and a key never goes in a URL).

const KEY = "raydemucs.apiKey";
const RECONNECT_S = [1, 2, 5, 10];
let askForKey = async () => { throw new ApiError(401, "Unauthenticated", "an API key is needed"); };

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

/** `ask()` resolves once a person has given a key (the page's dialog). */
export function onKeyNeeded(ask) {
  askForKey = ask;
}

function authorization() {
  const key = apiKey.get();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorOf(response) {
  try {
    const { error } = await response.json();
    return new ApiError(response.status, error.type, error.message);
  } catch {
    return new ApiError(response.status, "HTTPError", `${response.status} ${response.statusText}`);
  }
}

/** A request to the API; its JSON (or the response itself with `raw`). A 401 asks for a key,
 *  then tries again; any other error is an ApiError with the server's one-line message. */
export async function request(path, { method = "GET", body, headers = {}, raw = false, signal } = {}) {
  for (;;) {
    const response = await fetch(path, { method, body, signal, headers: { ...authorization(), ...headers } });
    if (response.status === 401) {
      await askForKey();
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return raw ? response : response.json();
  }
}

/** POST one file to /v1/tasks with `fields`; `onProgress(sent, total)` as it goes; the task. */
export function upload(file, fields, onProgress) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) if (value !== "" && value != null) form.append(name, value);
  form.append("file", file, file.name);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "v1/tasks");
    for (const [name, value] of Object.entries(authorization())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => event.lengthComputable && onProgress(event.loaded, event.total);
    xhr.onerror = () => reject(new ApiError(0, "NetworkError", "the service could not be reached"));
    xhr.onload = async () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON: the status says it */ }
      if (xhr.status === 401) {
        try {
          await askForKey();
          resolve(await upload(file, fields, onProgress));
        } catch (error) { reject(error); }
      } else if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
      } else {
        reject(new ApiError(xhr.status, body?.error?.type ?? "HTTPError",
                            body?.error?.message ?? `${xhr.status} ${xhr.statusText}`));
      }
    };
    xhr.send(form);
  });
}

function parseEvent(block) {
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
  return data.length ? { event, data: JSON.parse(data.join("\n")) } : null;
}

/** The server-sent events of `path`, `{event, data}` each, until the stream ends; the first,
 *  `{event: "open"}`, once the stream is open. */
export async function* events(path, signal) {
  const response = await request(path, { raw: true, signal, headers: { Accept: "text/event-stream" } });
  yield { event: "open", data: null };
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (let end = buffer.search(/\r?\n\r?\n/); end >= 0; end = buffer.search(/\r?\n\r?\n/)) {
      const found = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      if (found) yield found;
    }
  }
}

/** Follow the events of `path` for ever, reconnecting when the stream drops: `before()` is
 *  awaited before each connection, `onEvent({event, data})` for each event, `onState(state)`
 *  with "connecting", "live" or "reconnecting", `onError(error)` when a connection fails. */
export async function follow(path, { before, onEvent, onState, onError }) {
  for (let failures = 0; ; failures += 1) {
    try {
      onState?.("connecting");
      await before?.();
      for await (const found of events(path)) {
        if (found.event === "open") { onState?.("live"); failures = 0; }
        else onEvent(found);
      }
    } catch (error) {
      onError?.(error);
    }
    onState?.("reconnecting");
    const wait = RECONNECT_S[Math.min(failures, RECONNECT_S.length - 1)];
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
  }
}
