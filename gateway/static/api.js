// Talking to the gateway: JSON calls, ChatKit requests, and Server-Sent Events read from a fetch body (the
// requests are POSTs with a bearer header, which EventSource cannot send).

const TOKEN_KEY = "kitrelay.token";
const USER_KEY = "kitrelay.user";
// The local sign-in key, from a sign-in link that `kitrelay up` printed (kept across sign-outs: it is the browser's,
// not a user's).
const SIGN_IN_KEY = "kitrelay.sign-in-key";

export const session = {
  get token() {
    return localStorage.getItem(TOKEN_KEY);
  },
  get user() {
    return localStorage.getItem(USER_KEY);
  },
  signIn(token, user) {
    localStorage.setItem(TOKEN_KEY, token);
    localStorage.setItem(USER_KEY, user);
  },
  signOut() {
    localStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(USER_KEY);
  },
  get signInKey() {
    return localStorage.getItem(SIGN_IN_KEY);
  },
  set signInKey(key) {
    if (key) localStorage.setItem(SIGN_IN_KEY, key);
    else localStorage.removeItem(SIGN_IN_KEY);
  },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Fired on any 401, so the page can go back to its sign-in form from wherever the call was made.
export const UNAUTHORIZED_EVENT = "kitrelay:unauthorized";

function authHeaders() {
  const token = session.token;
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// What an answer without a JSON body (a proxy's error page) means, in words a person can act on.
const STATUS_WORDS = {
  500: "Something went wrong on the server (500 Internal Server Error). Try again; if it keeps happening, tell whoever runs kitrelay.",
  502: "kitrelay cannot be reached right now (502 Bad Gateway: the proxy in front of it got no answer). Try again in a moment.",
  503: "kitrelay is not available right now (503 Service Unavailable): it may be starting or overloaded. Try again in a moment.",
  504: "kitrelay took too long to answer (504 Gateway Timeout). Try again in a moment.",
  429: "Too many requests for now (429). Wait a moment, then try again.",
};

async function failure(response) {
  let code = "http_error";
  let message =
    STATUS_WORDS[response.status] ||
    `The server refused the request (${response.status}${response.statusText ? ` ${response.statusText}` : ""}).`;
  try {
    const body = await response.json();
    if (body && typeof body.message === "string") {
      message = body.message;
      code = body.error || code;
    }
  } catch {
    // Not JSON (a proxy's error page): the status line says enough.
  }
  if (response.status === 401) {
    window.dispatchEvent(new CustomEvent(UNAUTHORIZED_EVENT, { detail: message }));
  }
  return new ApiError(response.status, code, message);
}

/** fetch() with the bearer token; throws ApiError with the server's own message on any non-2xx answer. */
export async function send(path, { method = "GET", json, body, headers = {}, signal, auth = true } = {}) {
  const init = { method, signal, headers: { ...(auth ? authHeaders() : {}), ...headers } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network_error", "Cannot reach the server. Check your connection and try again.");
  }
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJson(path, options) {
  return (await send(path, options)).json();
}

/** A non-streaming ChatKit request (threads.list, items.list, items.feedback, attachments.create, ...). */
export async function chatkit(type, params = {}) {
  return (await send("/chatkit", { method: "POST", json: { type, params } })).json();
}

/** A streaming ChatKit request: yields {id, data} for each event of its SSE answer. */
export async function* chatkitStream(type, params, signal) {
  const response = await send("/chatkit", { method: "POST", json: { type, params }, signal });
  yield* sseEvents(response, signal);
}

/** Re-attach to a turn's stream after the entry `lastEventId` (from the start when null). */
export async function* followTurn(turnId, lastEventId, signal) {
  const headers = lastEventId ? { "Last-Event-ID": lastEventId } : {};
  const response = await send(`/turns/${encodeURIComponent(turnId)}/events`, { headers, signal });
  yield* sseEvents(response, signal);
}

/** The team's event stream (task changes, whoever made them), from after `lastEventId` (from now when null). */
export async function* teamEvents(lastEventId, signal) {
  const headers = lastEventId ? { "Last-Event-ID": lastEventId } : {};
  const response = await send("/events", { headers, signal });
  yield* sseEvents(response, signal);
}

/** Parse an SSE body: events end at a blank line; `data:` lines join with newlines; comments (pings) skipped. */
export async function* sseEvents(response, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let boundary;
      while ((boundary = buffer.search(/\r?\n\r?\n/)) !== -1) {
        const block = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary).replace(/^\r?\n\r?\n/, "");
        const event = parseBlock(block);
        if (event) yield event;
      }
    }
    const last = parseBlock(buffer + decoder.decode());
    if (last) yield last;
  } finally {
    if (signal?.aborted) reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

function parseBlock(block) {
  const data = [];
  let id = null;
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length) return null;
  try {
    return { id, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}
