// OpenAI's ChatKit web component, pointed at this gateway (a custom backend: api.url + domainKey + fetch).
// The bearer token is the one the built-in page keeps (localStorage "kitrelay.token"), or one minted here through
// the local dev sign-in. Uploads use ChatKit's two-phase strategy: attachments.create hands out an upload URL
// whose descriptor carries a one-attachment upload token.

const TOKEN_KEY = "kitrelay.token";
const USER_KEY = "kitrelay.user";
// Set by the built-in page when this browser opened a sign-in link from `kitrelay up` (see gateway/dev_signin.py).
const SIGN_IN_KEY = "kitrelay.sign-in-key";
const params = new URLSearchParams(location.search);
// ChatKit wants a domain key (register the domain at platform.openai.com → Settings → Security → Domain
// allowlist); ?domainKey=domain_pk_... sets it, the placeholder works for local development.
const domainKey = params.get("domainKey") || "domain_pk_localhost_dev";
const $ = (id) => document.getElementById(id);

function authorization() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function authFetch(input, init = {}) {
  const headers = new Headers(init.headers || {});
  for (const [name, value] of Object.entries(authorization())) if (!headers.has(name)) headers.set(name, value);
  const response = await fetch(input, { ...init, headers });
  if (response.status === 401) {
    localStorage.removeItem(TOKEN_KEY);
    $("chat").hidden = true;
    showSignIn("Your session has ended: sign in again.");
  }
  return response;
}

const CHATKIT_SRC = "https://cdn.platform.openai.com/deployments/chatkit/chatkit.js";
// How long the page waits for ChatKit before it says it cannot load it (it still mounts it if it comes later).
const LOAD_WAIT_MS = 2000;

let config = null;
let loaded = false;

function status(state, ...lines) {
  const box = $("status");
  box.dataset.state = state;
  const text = $("status-text");
  text.replaceChildren(
    ...lines.map((line) => {
      const p = document.createElement("p");
      p.append(...(Array.isArray(line) ? line : [line]));
      return p;
    }),
  );
  box.hidden = false;
}

function link(href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}

/** OpenAI's web component, from its CDN: resolves true once it is defined, false on a load error or after
 * LOAD_WAIT_MS (an unreachable CDN can leave a request hanging far longer). */
function loadChatKit() {
  const script = document.createElement("script");
  script.src = CHATKIT_SRC;
  script.async = true;
  const defined = customElements.whenDefined("openai-chatkit").then(() => {
    loaded = true;
    return true;
  });
  const failed = new Promise((resolve) => {
    script.addEventListener("error", () => resolve(false));
    setTimeout(() => resolve(false), LOAD_WAIT_MS);
  });
  document.head.append(script);
  return { first: Promise.race([defined, failed]), defined };
}

function cannotLoad() {
  status(
    "failed",
    "ChatKit JS could not be loaded: this page gets OpenAI's ChatKit component from cdn.platform.openai.com, which this browser cannot reach.",
    ["The built-in chat page needs no internet access: ", link("/", "open it"), "."],
  );
}

function showSignIn(reason) {
  if (!config || config.mode !== "jwt") return;
  // The form only where it can work: ChatKit is here, and this browser opened a sign-in link (dev sign-in).
  if (!loaded || !config.dev_sign_in || !localStorage.getItem(SIGN_IN_KEY)) {
    status(
      "signed-out",
      config.dev_sign_in
        ? ["Open the sign-in link `kitrelay up` printed (it opens the ", link("/", "built-in page"), "), then come back."]
        : ["Sign in on the ", link("/", "built-in page"), " first, then come back: this page reuses its token."],
    );
    return;
  }
  $("status").hidden = true;
  $("signin").hidden = false;
  $("user").value ||= config.default_user;
  $("team").value ||= config.default_team;
  $("signin-error").textContent = reason || "";
  $("user").focus();
}

async function signIn(event) {
  event.preventDefault();
  const response = await fetch("/auth/dev-token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      user: $("user").value.trim(),
      team: $("team").value.trim(),
      key: localStorage.getItem(SIGN_IN_KEY) || "",
    }),
  });
  const body = await response.json();
  if (!response.ok) {
    $("signin-error").textContent = body.message || "Sign-in failed.";
    return;
  }
  localStorage.setItem(TOKEN_KEY, body.token);
  localStorage.setItem(USER_KEY, body.user);
  location.reload();
}

function mount() {
  const chat = $("chat");
  chat.setOptions({
    api: {
      url: `${location.origin}/chatkit`,
      domainKey,
      fetch: authFetch,
      uploadStrategy: { type: "two_phase" },
    },
    theme: { colorScheme: matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light", radius: "round" },
    history: { enabled: true },
    threadItemActions: { feedback: true },
    startScreen: {
      greeting: "How can I help?",
      prompts: [
        { label: "Add a task", prompt: "add task buy milk", icon: "write" },
        { label: "List my tasks", prompt: "list my tasks", icon: "check-circle" },
        { label: "Ask the guide", prompt: "what does the guide say about VPN access?", icon: "book-open" },
      ],
    },
    composer: {
      placeholder: "Message kitrelay…",
      attachments: {
        enabled: true,
        accept: { "text/plain": [".txt"], "text/markdown": [".md", ".markdown"], "application/pdf": [".pdf"] },
        maxSize: 10 * 1024 * 1024,
      },
    },
  });
  $("status").hidden = true;
}

async function start() {
  $("signin").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(USER_KEY);
    location.reload();
  });
  const chatkit = loadChatKit();
  try {
    config = await (await fetch("/auth/config")).json();
  } catch {
    status("failed", "kitrelay cannot be reached: is it running?");
    return;
  }
  const dev = config.mode === "dev";
  $("who").textContent = dev ? config.user : localStorage.getItem(USER_KEY) || "";
  $("signout").hidden = dev || !localStorage.getItem(TOKEN_KEY);
  const signedIn = dev || Boolean(localStorage.getItem(TOKEN_KEY));
  if (!(await chatkit.first)) {
    cannotLoad();
    // Slow rather than unreachable: it still comes up when the component arrives.
    await chatkit.defined;
  }
  if (!signedIn) {
    showSignIn();
    return;
  }
  mount();
}

start();
