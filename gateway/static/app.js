// The kitrelay chat page: sign-in, threads, a streamed conversation with widgets, attachments, feedback, stop
// and re-attach after a reload. It speaks the ChatKit protocol to POST /chatkit (see the README, "The API").

import {
  ApiError,
  UNAUTHORIZED_EVENT,
  chatkit,
  chatkitStream,
  followTurn,
  getJson,
  send,
  session,
  teamEvents,
} from "./api.js";
import { icon } from "./icons.js";
import { renderInline, renderMarkdown } from "./markdown.js";
import { findComponent, renderWidget } from "./widgets.js";

// Per-tab memory of the open thread and the running turns (one per thread), per user (another user signing in
// here must not inherit them).
const turnKey = () => `kitrelay.turns:${currentUser()}`;
const threadKey = () => `kitrelay.thread:${currentUser()}`;
// A thread's own address: bookmarkable, Back works, a new tab opens the same thread.
const THREAD_PATH = /^\/t\/([^/]+)\/?$/;
// Task widgets keep what they show in their root's id (agents/widgets.py).
const TASK_VIEW_PREFIX = "kitrelay.tasks/";
const SEARCH_DELAY_MS = 200;
const TEAM_EVENTS_RETRY_MS = [1000, 2000, 5000, 10000];
const MIME_BY_EXTENSION = { txt: "text/plain", md: "text/markdown", markdown: "text/markdown", pdf: "application/pdf" };
const REATTACH_TRIES = 3;
// A replay after a reload that goes this long without an event is caught up (see runStream's catchUpTo).
const CATCH_UP_QUIET_MS = 500;

const $ = (id) => document.getElementById(id);
const ui = {
  signin: $("signin"), signinForm: $("signin-form"), signinUser: $("signin-user"), signinTeam: $("signin-team"),
  signinToken: $("signin-token"), signinHint: $("signin-hint"), signinError: $("signin-error"),
  signinDev: $("signin-dev-fields"), signinTokenFields: $("signin-token-fields"), signinSubmit: $("signin-submit"),
  app: $("app"), sidebar: $("sidebar"), scrim: $("scrim"), threadList: $("thread-list"),
  threadsEmpty: $("threads-empty"), newThread: $("new-thread"), currentUser: $("current-user"), avatar: $("avatar"),
  signout: $("signout"), title: $("thread-title"), scroller: $("scroller"), empty: $("empty"),
  messages: $("messages"), progress: $("progress"), progressText: $("progress-text"), errorBanner: $("error-banner"),
  errorText: $("error-text"), errorRetry: $("error-retry"), composer: $("composer"), input: $("composer-input"), attach: $("composer-attach"),
  sendBtn: $("composer-send"), stopBtn: $("composer-stop"), chips: $("chips"), toast: $("toast"),
  currentTeam: $("current-team"), search: $("thread-search"), typing: $("typing"), announcer: $("announcer"),
  confirm: $("confirm-dialog"), confirmText: $("confirm-text"), sidebarOpen: $("sidebar-open"), main: document.querySelector(".main"),
  docViewer: $("document-viewer"), docTitle: $("document-title"), docMeta: $("document-meta"),
  docPassages: $("document-passages"), docDownload: $("document-download"),
};

const state = {
  config: null,
  threads: [],
  threadId: null,
  loadToken: 0,
  // item id -> {item, node, final}; `final` marks an item known complete (saved, or its done event seen).
  items: new Map(),
  streams: new Set(),
  attachments: [],
  // The caller's votes on the open thread's replies, by item id (shown pressed again after a reload).
  feedback: new Map(),
  // What the sidebar shows: "" lists by last activity, anything else is a search.
  query: "",
  me: null,
  // Aborts the team's event stream (on sign-out).
  teamEvents: null,
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fillIcons(root = document) {
  for (const slot of root.querySelectorAll("[data-icon]")) {
    if (!slot.firstChild) slot.append(icon(slot.dataset.icon));
  }
}

// -- feedback to the user ---------------------------------------------------------------------------------------

function showError(message, retry = null) {
  ui.errorText.textContent = message;
  ui.errorRetry.hidden = !retry;
  ui.errorRetry.onclick = retry;
  ui.errorBanner.hidden = false;
}

function clearError() {
  ui.errorBanner.hidden = true;
  ui.errorText.textContent = "";
  ui.errorRetry.onclick = null;
}

let toastTimer = 0;
function toast(message) {
  ui.toast.textContent = message;
  ui.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (ui.toast.hidden = true), 2600);
}

function messageOf(error) {
  if (error instanceof ApiError) return error.message;
  return "Something went wrong. Try again.";
}

// -- sign-in ----------------------------------------------------------------------------------------------------

function showSignIn(reason) {
  document.body.dataset.ready = "false";
  ui.app.hidden = true;
  ui.signin.hidden = false;
  const { config } = state;
  const devSignIn = config.mode === "jwt" && config.dev_sign_in;
  // Dev sign-in needs this browser to have opened a sign-in link (proof that it is the data directory's owner).
  const linked = devSignIn && Boolean(session.signInKey);
  ui.signinDev.hidden = !linked;
  ui.signinTokenFields.hidden = devSignIn;
  ui.signinSubmit.hidden = devSignIn && !linked;
  ui.signinHint.textContent = !devSignIn
    ? "This kitrelay checks tokens from your identity provider. Paste a bearer token to continue."
    : linked
      ? "Choose who you are on this local kitrelay. Each user sees only their own conversations."
      : "To sign in, open the sign-in link that `kitrelay up` printed in its terminal (or run `kitrelay sign-in-link` for a new one).";
  ui.signinUser.value ||= config.default_user || "";
  ui.signinTeam.value ||= config.default_team || "";
  ui.signinError.hidden = !reason;
  ui.signinError.textContent = reason || "";
  if (!devSignIn) ui.signinToken.focus();
  else if (linked) ui.signinUser.focus();
}

// A sign-in link is the page's URL with `#sign-in=<one-time code>`: the fragment never reaches a server or its
// logs. The code is taken out of the address bar at once and traded for this browser's sign-in key.
function takeSignInCode() {
  const match = /^#sign-in=([A-Za-z0-9._-]+)$/.exec(location.hash);
  if (!match) return null;
  history.replaceState(null, "", location.pathname + location.search);
  return match[1];
}

async function redeemSignInCode(code) {
  const linked = await getJson("/auth/dev-link", { method: "POST", json: { code }, auth: false });
  session.signInKey = linked.key;
}

function currentUser() {
  return state.config?.mode === "dev" ? state.config.user : session.user || "";
}

function tokenSubject(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, "="))).sub || "signed in";
  } catch {
    return null;
  }
}

async function submitSignIn(event) {
  event.preventDefault();
  ui.signinError.hidden = true;
  ui.signinSubmit.disabled = true;
  try {
    if (state.config.dev_sign_in) {
      const user = ui.signinUser.value.trim();
      const team = ui.signinTeam.value.trim();
      if (!user || !team) throw new ApiError(400, "invalid_request", "Enter a user and a team.");
      const key = session.signInKey;
      const minted = await getJson("/auth/dev-token", { method: "POST", json: { user, team, key }, auth: false });
      session.signIn(minted.token, minted.user);
    } else {
      const token = ui.signinToken.value.trim();
      const subject = token && tokenSubject(token);
      if (!subject) throw new ApiError(400, "invalid_request", "That does not look like a JWT (three dot-separated parts).");
      session.signIn(token, subject);
    }
    await enterApp();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) session.signOut();
    if (error instanceof ApiError && error.code === "sign_in_required") {
      // The key is no good any more (expired, or the secret changed): back to asking for a link.
      session.signInKey = null;
      showSignIn(messageOf(error));
      return;
    }
    ui.signinError.textContent = messageOf(error);
    ui.signinError.hidden = false;
  } finally {
    ui.signinSubmit.disabled = false;
  }
}

function signOut() {
  for (const stream of state.streams) stream.controller.abort();
  stopTeamEvents();
  sessionStorage.removeItem(turnKey());
  sessionStorage.removeItem(threadKey());
  session.signOut();
  resetConversation();
  history.replaceState(null, "", "/");
  showSignIn();
}

async function enterApp() {
  const dev = state.config.mode === "dev";
  const user = currentUser();
  ui.currentUser.textContent = user || "";
  ui.avatar.textContent = (user || "?").slice(0, 1).toUpperCase();
  ui.signout.hidden = dev;
  const [me] = await Promise.all([getJson("/me"), loadThreads()]);
  state.me = me;
  ui.currentUser.textContent = me.user_id;
  ui.currentTeam.textContent = `Team ${me.team_id}`;
  ui.avatar.textContent = me.user_id.slice(0, 1).toUpperCase();
  ui.signin.hidden = true;
  ui.app.hidden = false;
  document.body.dataset.ready = "true";
  startTeamEvents();
  const fromUrl = threadInUrl();
  const lastThread = sessionStorage.getItem(threadKey());
  const wanted = fromUrl || (lastThread && state.threads.some((thread) => thread.id === lastThread) ? lastThread : null);
  if (wanted) {
    await openThread(wanted, { push: false });
  } else {
    history.replaceState(null, "", "/");
  }
  ui.input.focus();
}

// -- threads ----------------------------------------------------------------------------------------------------

function threadInUrl() {
  const match = THREAD_PATH.exec(location.pathname);
  return match ? decodeURIComponent(match[1]) : null;
}

/** The address bar follows the open thread (a new entry per thread opened, so Back goes to the one before). */
function showInUrl(threadId, { push = true } = {}) {
  const path = threadId ? `/t/${encodeURIComponent(threadId)}` : "/";
  if (location.pathname === path) return;
  if (push) history.pushState({ threadId }, "", path);
  else history.replaceState({ threadId }, "", path);
}

let threadsToken = 0;
async function loadThreads() {
  const token = ++threadsToken;
  const query = state.query;
  const params = new URLSearchParams({ limit: "50" });
  if (query) params.set("q", query);
  const page = await getJson(`/threads?${params}`);
  if (token !== threadsToken) return; // a newer listing is on its way
  state.threads = page.data || [];
  renderThreadList();
}

function threadTitle(thread) {
  return thread?.title || "New chat";
}

/** When, as a sidebar shows it: the time today, the weekday this week, else the date. */
function when(moment) {
  const date = new Date(moment);
  if (Number.isNaN(date.getTime())) return "";
  const now = new Date();
  if (date.toDateString() === now.toDateString()) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  if (now - date < 6 * 24 * 3600 * 1000) return date.toLocaleDateString([], { weekday: "short" });
  return date.toLocaleDateString([], { month: "short", day: "numeric" });
}

/** Whether a reply is being written in `threadId`: by a stream of this page, or (the listing says) elsewhere. */
function threadWriting(threadId) {
  if ([...state.streams].some((stream) => stream.threadId === threadId && !stream.stopRequested)) return true;
  return Boolean(state.threads.find((thread) => thread.id === threadId)?.running_turn_id) && !streamsOf(threadId).length;
}

function renderThreadList() {
  const focusedThread = document.activeElement?.closest?.("[data-thread-row]")?.dataset.threadRow;
  const focusedRole = document.activeElement?.dataset?.testid;
  ui.threadList.replaceChildren(...state.threads.map(threadRow));
  ui.threadsEmpty.textContent = state.query ? "No conversations match." : "No conversations yet.";
  ui.threadsEmpty.hidden = state.threads.length > 0;
  $("threads-heading").textContent = state.query ? "Results" : "Recent";
  if (focusedThread && focusedRole) {
    ui.threadList
      .querySelector(`[data-thread-row="${CSS.escape(focusedThread)}"] [data-testid="${CSS.escape(focusedRole)}"]`)
      ?.focus();
  }
}

function threadRow(thread) {
  const li = el("li", "thread-row");
  li.dataset.threadRow = thread.id;
  const button = el("button", "thread-item");
  button.type = "button";
  button.dataset.testid = "thread-item";
  button.dataset.threadId = thread.id;
  if (thread.id === state.threadId) button.setAttribute("aria-current", "true");
  const writing = threadWriting(thread.id);
  button.dataset.writing = writing ? "true" : "false";
  const title = el("span", "thread-name", threadTitle(thread));
  const time = el("time", "thread-when", when(thread.last_activity_at || thread.created_at));
  time.dateTime = thread.last_activity_at || thread.created_at || "";
  time.title = new Date(time.dateTime).toLocaleString();
  const meta = el("span", "thread-meta");
  if (writing) {
    const dot = el("span", "writing-dot");
    dot.dataset.testid = "thread-writing";
    dot.setAttribute("role", "img");
    dot.setAttribute("aria-label", "writing a reply");
    meta.append(dot);
  }
  meta.append(time);
  button.append(title, meta);
  button.addEventListener("click", () => openThread(thread.id));
  const actions = el("span", "thread-actions");
  const rename = el("button", "icon-btn icon-btn-sm");
  rename.type = "button";
  rename.dataset.testid = "thread-rename";
  rename.setAttribute("aria-label", `Rename “${threadTitle(thread)}”`);
  rename.title = "Rename";
  rename.append(icon("edit", { size: 15 }));
  rename.addEventListener("click", () => startRename(li, thread));
  const remove = el("button", "icon-btn icon-btn-sm");
  remove.type = "button";
  remove.dataset.testid = "thread-delete";
  remove.setAttribute("aria-label", `Delete “${threadTitle(thread)}”`);
  remove.title = "Delete";
  remove.append(icon("trash", { size: 15 }));
  remove.addEventListener("click", () => confirmDelete(thread, remove));
  actions.append(rename, remove);
  li.append(button, actions);
  return li;
}

function startRename(li, thread) {
  const input = el("input", "thread-rename-input");
  input.dataset.testid = "thread-rename-input";
  input.value = thread.title || "";
  input.maxLength = 500;
  input.setAttribute("aria-label", "New name of the conversation");
  li.replaceChildren(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== thread.title) {
      try {
        const updated = await chatkit("threads.update", { thread_id: thread.id, title });
        upsertThread({ ...thread, title: updated.title ?? title });
      } catch (error) {
        showError(messageOf(error));
      }
    }
    renderThreadList();
    ui.threadList.querySelector(`[data-thread-row="${CSS.escape(thread.id)}"] [data-testid="thread-rename"]`)?.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
}

function confirmDelete(thread, opener) {
  ui.confirmText.textContent = `“${threadTitle(thread)}” and all its messages will be deleted. This cannot be undone.`;
  ui.confirm.returnValue = "";
  ui.confirm.onclose = async () => {
    if (ui.confirm.returnValue !== "delete") {
      opener.focus();
      return;
    }
    try {
      for (const stream of streamsOf(thread.id)) stream.controller.abort();
      await chatkit("threads.delete", { thread_id: thread.id });
      state.threads = state.threads.filter((known) => known.id !== thread.id);
      if (state.threadId === thread.id) newThread();
      renderThreadList();
      toast("Conversation deleted.");
      ui.newThread.focus();
    } catch (error) {
      showError(messageOf(error));
    }
  };
  ui.confirm.showModal();
  ui.confirm.querySelector('[data-testid="confirm-cancel"]').focus();
}

let searchTimer = 0;
function onSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    state.query = ui.search.value.trim();
    loadThreads().catch((error) => showError(messageOf(error)));
  }, SEARCH_DELAY_MS);
}

function upsertThread(thread) {
  const index = state.threads.findIndex((known) => known.id === thread.id);
  if (index === -1) {
    if (!state.query) state.threads.unshift({ last_activity_at: new Date().toISOString(), ...thread });
  } else {
    state.threads[index] = { ...state.threads[index], ...thread };
  }
  renderThreadList();
  if (thread.id === state.threadId) ui.title.textContent = threadTitle(thread);
}

function resetConversation() {
  state.threadId = null;
  state.items.clear();
  state.feedback.clear();
  ui.messages.replaceChildren();
  ui.title.textContent = "New chat";
  ui.empty.hidden = false;
  hideProgress();
  clearError();
  updateTurnState();
}

function newThread({ push = true } = {}) {
  resetConversation();
  sessionStorage.removeItem(threadKey());
  showInUrl(null, { push });
  renderThreadList();
  closeSidebar({ restoreFocus: false });
  ui.input.focus();
}

async function allItems(threadId) {
  const items = [];
  let after = null;
  for (;;) {
    const page = await chatkit("items.list", { thread_id: threadId, limit: 100, order: "asc", after });
    items.push(...(page.data || []));
    if (!page.has_more || !page.after) return items;
    after = page.after;
  }
}

/** Bring the open thread in line with what is saved (after a stream that ended without finishing an item). */
async function refreshItems(threadId) {
  const items = await allItems(threadId);
  if (threadId !== state.threadId) return;
  const saved = new Set(items.map((item) => item.id));
  for (const id of [...state.items.keys()]) if (!saved.has(id)) removeItem(id);
  for (const item of items) upsertItem(item, { final: true });
}

async function loadFeedback(threadId) {
  try {
    const { data } = await getJson(`/threads/${encodeURIComponent(threadId)}/feedback`);
    if (threadId !== state.threadId) return;
    for (const [itemId, kind] of Object.entries(data || {})) {
      state.feedback.set(itemId, kind);
      const record = state.items.get(itemId);
      if (record?.actions) showVote(record, kind);
    }
  } catch {
    // Votes are a nicety: the thread shows without them.
  }
}

async function openThread(threadId, { keepTurn = false, push = true } = {}) {
  const token = ++state.loadToken;
  resetConversation();
  state.threadId = threadId;
  showInUrl(threadId, { push });
  renderThreadList();
  updateTurnState();
  closeSidebar({ restoreFocus: false });
  try {
    const thread = await chatkit("threads.get_by_id", { thread_id: threadId });
    const items = await allItems(threadId);
    if (token !== state.loadToken) return;
    ui.title.textContent = threadTitle(thread);
    sessionStorage.setItem(threadKey(), threadId);
    // What this page showed meanwhile (a message sent while the thread was loading) stays below what was saved.
    const live = ui.messages.firstChild;
    for (const item of items) upsertItem(item, { final: true, before: live });
    loadFeedback(threadId);
    scrollToEnd(true);
    // A reply still being written here was not shown while another thread was open, and is not saved yet:
    // follow its turn again from the start so it shows whole.
    const following = streamsOf(threadId).filter((stream) => stream.following && stream.turnId);
    for (const stream of following) replayTurn(stream);
    if (!following.length && !streamsOf(threadId).length) {
      // Written by another tab, or by this one before a reload: follow it here too.
      const saved = readSavedTurns()[threadId];
      const running = state.threads.find((known) => known.id === threadId)?.running_turn_id;
      if (saved) reattach(saved);
      else if (running) reattach({ turn_id: running, thread_id: threadId });
    }
    updateTurnState();
  } catch (error) {
    if (token !== state.loadToken) return;
    if (error instanceof ApiError && error.status === 404) {
      sessionStorage.removeItem(threadKey());
      if (!keepTurn) newThread({ push: false });
      showError("That conversation does not exist, or it is not yours.");
      return;
    }
    showError(messageOf(error));
  }
}

// -- team events ------------------------------------------------------------------------------------------------

// The team's task changes, pushed by the gateway (GET /events): the open thread's task widgets are drawn again
// from the tasks as they are, whoever changed them. The stream reconnects by itself, after the last event seen.
function startTeamEvents() {
  stopTeamEvents();
  const controller = new AbortController();
  state.teamEvents = controller;
  followTeamEvents(controller.signal);
}

function stopTeamEvents() {
  state.teamEvents?.abort();
  state.teamEvents = null;
  delete document.body.dataset.teamEvents;
}

async function followTeamEvents(signal) {
  let lastEventId = null;
  for (let attempt = 0; !signal.aborted; attempt += 1) {
    try {
      for await (const event of teamEvents(lastEventId, signal)) {
        if (event.id) lastEventId = event.id;
        attempt = 0;
        if (event.data?.type === "stream.opened") {
          document.body.dataset.teamEvents = "open";
          refreshTaskWidgets(); // whatever happened while it was not connected
        } else if (event.data?.type === "task.changed") {
          refreshTaskWidgets();
        }
      }
    } catch (error) {
      if (signal.aborted || error?.name === "AbortError") return;
      if (error instanceof ApiError && error.status === 401) return;
    }
    if (signal.aborted) return;
    document.body.dataset.teamEvents = "reconnecting";
    const delay = TEAM_EVENTS_RETRY_MS[Math.min(attempt, TEAM_EVENTS_RETRY_MS.length - 1)];
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

function showsTasks(record) {
  return record.item.type === "widget" && String(record.item.widget?.id || "").startsWith(TASK_VIEW_PREFIX);
}

// One refresh at a time; a change that comes during one asks for another right after it.
let refreshing = null;
let refreshAgain = false;
function refreshTaskWidgets() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      const threadId = state.threadId;
      if (!threadId || ![...state.items.values()].some(showsTasks)) continue;
      try {
        const { data } = await getJson(`/threads/${encodeURIComponent(threadId)}/task-widgets`);
        if (threadId !== state.threadId) continue;
        for (const item of data || []) {
          const shown = state.items.get(item.id);
          if (shown && !sameItem(shown.item, item)) upsertItem(item, { final: true });
        }
      } catch {
        // The next change (or reconnect) tries again; a reload draws them anyway.
      }
    } while (refreshAgain);
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

// -- items ------------------------------------------------------------------------------------------------------

function nearBottom() {
  const { scrollTop, scrollHeight, clientHeight } = ui.scroller;
  return scrollHeight - scrollTop - clientHeight < 120;
}

// Follow the reply as it grows, unless the reader scrolled up to read something else.
let stick = true;
function scrollToEnd(force = false) {
  if (force) stick = true;
  if (stick) ui.scroller.scrollTop = ui.scroller.scrollHeight;
}

function renderUserMessage(item) {
  const node = el("div", "message message-user");
  const bubble = el("div", "bubble");
  const text = (item.content || [])
    .map((part) => (part.type === "input_text" ? part.text : part.type === "input_tag" ? `@${part.text}` : ""))
    .join("");
  if (item.quoted_text) bubble.append(el("blockquote", "quoted", item.quoted_text));
  if (text) bubble.append(el("div", "user-text", text));
  if (item.attachments?.length) {
    const chips = el("div", "chips chips-sent");
    for (const attachment of item.attachments) chips.append(chip(attachment.name, "ready"));
    bubble.append(chips);
  }
  node.append(bubble);
  return node;
}

/** The sources an assistant message cites, numbered as its text's [n] markers are (the n-th annotation). */
function sourcesOf(item) {
  const sources = [];
  for (const part of item.content || []) {
    for (const annotation of part.annotations || []) {
      const source = annotation.source || {};
      sources.push({ ...source, label: source.title || source.filename || source.url || "source" });
    }
  }
  return sources;
}

/** What a source opens: a document of the team's knowledge base (at its passage), a web page, or nothing. */
function sourceTarget(source) {
  const documentId = source.type === "entity" ? source.data?.document_id || source.id : null;
  if (documentId) return { documentId, passage: source.data?.passage ?? null, title: source.label };
  if (source.type === "url" && /^https?:/.test(source.url || "")) return { url: source.url };
  return null;
}

function citations(item) {
  const sources = sourcesOf(item);
  if (!sources.length) return null;
  const list = el("div", "citations");
  list.setAttribute("role", "group");
  list.setAttribute("aria-label", "Sources");
  const seen = new Set();
  sources.forEach((source, index) => {
    const key = `${source.type}:${source.id || ""}:${source.label}:${source.url || ""}`;
    if (seen.has(key)) return;
    seen.add(key);
    const target = sourceTarget(source);
    const node = el(target?.url ? "a" : target ? "button" : "span", "citation");
    node.dataset.testid = "citation";
    if (target?.url) {
      node.href = target.url;
      node.target = "_blank";
      node.rel = "noopener noreferrer";
    } else if (target) {
      node.type = "button";
      node.addEventListener("click", () => openDocument(target, node));
    }
    if (source.description) node.title = source.description;
    node.append(el("span", "citation-number", String(index + 1)));
    node.append(icon(source.type === "url" ? "globe" : "document", { size: 14 }));
    node.append(el("span", "citation-label", source.label));
    // The name is what the chip shows, and what it does: a name that differed from the text would confuse voice control.
    if (target) node.append(el("span", "sr-only", target.url ? " (opens the page)" : " (opens the document)"));
    list.append(node);
  });
  return list;
}

/** The [n] markers of a reply's text, made into links to their source. */
function linkMarkers(root, sources) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const texts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (/\[\d{1,2}\]/.test(node.nodeValue) && !node.parentElement.closest("code, pre, a, button")) texts.push(node);
  }
  for (const node of texts) {
    const fragment = document.createDocumentFragment();
    let rest = node.nodeValue;
    for (let match = /\[(\d{1,2})\]/.exec(rest); match; match = /\[(\d{1,2})\]/.exec(rest)) {
      const number = Number(match[1]);
      const source = sources[number - 1];
      const target = source && sourceTarget(source);
      fragment.append(rest.slice(0, match.index));
      if (target) {
        const ref = el(target.url ? "a" : "button", "cite-ref", `[${number}]`);
        ref.dataset.testid = "citation-ref";
        ref.setAttribute("aria-label", `[${number}] ${source.label}`);
        ref.title = source.label;
        if (target.url) {
          ref.href = target.url;
          ref.target = "_blank";
          ref.rel = "noopener noreferrer";
        } else {
          ref.type = "button";
          ref.addEventListener("click", () => openDocument(target, ref));
        }
        fragment.append(ref);
      } else {
        fragment.append(match[0]);
      }
      rest = rest.slice(match.index + match[0].length);
    }
    fragment.append(rest);
    node.replaceWith(fragment);
  }
}

function renderAssistantBody(record) {
  const { item, body } = record;
  const content = el("div", "md");
  for (const part of item.content || []) content.append(renderMarkdown(part.text || ""));
  const sources = sourcesOf(item);
  if (sources.length) linkMarkers(content, sources);
  const cited = citations(item);
  body.replaceChildren(content, ...(cited ? [cited] : []));
}

function renderAssistantMessage(record, streaming) {
  const { item } = record;
  const node = el("div", "message message-assistant");
  const avatar = el("span", "bot-avatar");
  avatar.setAttribute("aria-hidden", "true");
  const column = el("div", "assistant-column");
  record.body = el("div", "assistant-body");
  renderAssistantBody(record);
  const actions = el("div", "message-actions");
  for (const [kind, name, label] of [["positive", "thumbs-up", "Good reply"], ["negative", "thumbs-down", "Bad reply"]]) {
    const button = el("button", "icon-btn icon-btn-sm feedback");
    button.type = "button";
    button.dataset.testid = kind === "positive" ? "feedback-up" : "feedback-down";
    button.dataset.kind = kind;
    button.setAttribute("aria-label", label);
    button.title = label;
    button.setAttribute("aria-pressed", state.feedback.get(item.id) === kind ? "true" : "false");
    button.append(icon(name, { size: 16 }));
    button.addEventListener("click", () => giveFeedback(record, kind));
    actions.append(button);
  }
  const copy = el("button", "icon-btn icon-btn-sm copy");
  copy.type = "button";
  copy.setAttribute("aria-label", "Copy the reply");
  copy.title = "Copy";
  copy.append(icon("copy", { size: 16 }));
  copy.addEventListener("click", async () => {
    const text = (record.item.content || []).map((part) => part.text || "").join("\n\n");
    try {
      await navigator.clipboard.writeText(text);
      toast("Copied.");
    } catch {
      showError("The browser did not allow copying to the clipboard.");
    }
  });
  actions.prepend(copy);
  record.actions = actions;
  column.append(record.body, actions);
  node.append(avatar, column);
  setStreaming(node, record, streaming);
  return node;
}

function setStreaming(node, record, streaming) {
  node.dataset.streaming = streaming ? "true" : "false";
  for (const button of record.actions?.querySelectorAll("button") || []) button.disabled = streaming;
}

function renderItemNode(record, streaming) {
  const { item } = record;
  let node;
  switch (item.type) {
    case "user_message":
      node = renderUserMessage(item);
      node.dataset.role = "user";
      node.dataset.testid = "message";
      break;
    case "assistant_message":
      node = renderAssistantMessage(record, streaming);
      node.dataset.role = "assistant";
      node.dataset.testid = "message";
      break;
    case "widget":
      node = renderWidget(item.widget, { onAction: (action, source) => widgetAction(record, action, source) });
      node.classList.add("item-widget");
      break;
    case "workflow":
      node = renderWorkflow(item);
      break;
    case "task":
      node = el("div", "item-task muted", item.task?.title || item.task?.content || "");
      break;
    case "generated_image":
      if (!item.image?.url || !/^(https?:|data:image\/|blob:|\/)/.test(item.image.url)) return null;
      node = el("img", "item-image");
      node.src = item.image.url;
      node.alt = "Generated image";
      break;
    default:
      // Hidden context, client tool calls and end-of-turn markers are for the model, not the reader.
      return null;
  }
  node.dataset.itemId = item.id;
  return node;
}

function renderWorkflow(item) {
  const details = el("details", "item-workflow");
  const summary = el("summary");
  const workflow = item.workflow || {};
  const title = workflow.summary?.title || (workflow.summary?.duration != null ? `Worked for ${workflow.summary.duration}s` : "Working…");
  summary.textContent = title;
  details.append(summary);
  for (const task of workflow.tasks || []) {
    const line = el("div", "workflow-task");
    renderInline(task.title || task.content || "", line);
    details.append(line);
  }
  details.open = Boolean(workflow.expanded);
  return details;
}

const FOCUSABLE = 'button, [tabindex="0"], a[href], input, select, textarea';

function focusables(root) {
  return [...root.querySelectorAll(FOCUSABLE)];
}

function focusIndex(root) {
  return root.contains(document.activeElement) ? focusables(root).indexOf(document.activeElement) : -1;
}

/** Where the keyboard is inside `root`, so that a redrawn `root` can put it back on the same control: a list row
 * by its key (rows keep their key when they are redrawn), anything else by its position. */
function focusSpot(root) {
  if (!root.contains(document.activeElement)) return null;
  const row = document.activeElement.closest("[data-key]");
  if (row && root.contains(row)) {
    const inRow = row === document.activeElement ? -1 : focusables(row).indexOf(document.activeElement);
    return { key: row.dataset.key, inRow };
  }
  return { index: focusIndex(root) };
}

function restoreFocus(root, spot) {
  if (!spot) return;
  if (spot.key !== undefined) {
    const row = root.querySelector(`[data-key="${CSS.escape(spot.key)}"]`);
    if (row) {
      (spot.inRow === -1 ? row : focusables(row)[spot.inRow] || row).focus();
      return;
    }
  }
  if (spot.index !== undefined && spot.index !== -1) focusables(root)[spot.index]?.focus();
}

/** Show `item`, replacing what is shown under its id (an item can arrive again: re-attach, replay, replace). */
function upsertItem(item, { final = false, streaming = false, before = null } = {}) {
  const existing = state.items.get(item.id);
  const record = { item: structuredClone(item), node: null, final };
  const node = renderItemNode(record, streaming);
  if (existing?.node && existing.node.isConnected) {
    const spot = focusSpot(existing.node);
    if (node) existing.node.replaceWith(node);
    else existing.node.remove();
    // A widget replaced after a click keeps the keyboard where it was (the same row or button).
    if (node) restoreFocus(node, spot);
  } else if (node) {
    // `before`: a saved item loaded while a reply already shows (a message sent as the thread opened) goes above it.
    if (before?.parentNode === ui.messages) ui.messages.insertBefore(node, before);
    else ui.messages.append(node);
  }
  record.node = node;
  state.items.set(item.id, record);
  ui.empty.hidden = ui.messages.childElementCount > 0;
  scrollToEnd();
  return record;
}

function removeItem(itemId) {
  const record = state.items.get(itemId);
  record?.node?.remove();
  state.items.delete(itemId);
  ui.empty.hidden = ui.messages.childElementCount > 0;
}

// Re-render streamed text at most once a frame.
const dirty = new Set();
let frame = 0;
function markDirty(record) {
  dirty.add(record);
  if (!frame) frame = requestAnimationFrame(renderDirty);
}

/** Render what changed since the last frame; called directly to show a replayed burst in one go. */
function renderDirty() {
  cancelAnimationFrame(frame);
  frame = 0;
  for (const pending of dirty) {
    if (state.items.get(pending.item.id) !== pending) continue; // replaced since: the newer one is shown
    if (pending.item.type === "assistant_message") renderAssistantBody(pending);
    else if (pending.item.type === "widget") {
      const streaming = pending.node?.dataset.streaming === "true";
      upsertItem(pending.item, { streaming });
    }
  }
  dirty.clear();
  scrollToEnd();
}

function assistantRecord(itemId, threadId) {
  let record = state.items.get(itemId);
  if (!record) {
    // A delta for an item never announced here (re-attached mid-reply): start it empty.
    record = upsertItem(
      { id: itemId, thread_id: threadId, type: "assistant_message", content: [], created_at: new Date().toISOString() },
      { streaming: true },
    );
  }
  return record;
}

function applyUpdate(event, threadId) {
  const { update, item_id: itemId } = event;
  const existing = state.items.get(itemId);
  if (existing?.final) return; // complete already: a re-attached stream's done event will replace it anyway
  switch (update.type) {
    case "assistant_message.content_part.added":
    case "assistant_message.content_part.done": {
      const record = assistantRecord(itemId, threadId);
      record.item.content ||= [];
      record.item.content[update.content_index] = update.content;
      markDirty(record);
      break;
    }
    case "assistant_message.content_part.text_delta": {
      const record = assistantRecord(itemId, threadId);
      record.item.content ||= [];
      const part = (record.item.content[update.content_index] ||= { type: "output_text", text: "", annotations: [] });
      part.text = (part.text || "") + update.delta;
      markDirty(record);
      break;
    }
    case "assistant_message.content_part.annotation_added": {
      const record = assistantRecord(itemId, threadId);
      record.item.content ||= [];
      const part = (record.item.content[update.content_index] ||= { type: "output_text", text: "", annotations: [] });
      (part.annotations ||= [])[update.annotation_index] = update.annotation;
      markDirty(record);
      break;
    }
    case "widget.root.updated":
      if (existing) {
        existing.item.widget = update.widget;
        markDirty(existing);
      }
      break;
    case "widget.component.updated":
    case "widget.streaming_text.value_delta": {
      if (!existing) break;
      const component = findComponent(existing.item.widget, update.component_id);
      if (!component) break;
      if (update.type === "widget.component.updated") Object.assign(component, update.component);
      else component.value = (component.value || "") + update.delta;
      markDirty(existing);
      break;
    }
    case "workflow.task.added":
    case "workflow.task.updated":
      if (existing?.item.workflow) {
        existing.item.workflow.tasks ||= [];
        existing.item.workflow.tasks[update.task_index] = update.task;
        upsertItem(existing.item);
      }
      break;
    default:
      break;
  }
}

// -- streams ----------------------------------------------------------------------------------------------------

/** The turns this tab was following, by thread (what a reload re-attaches to). */
function readSavedTurns() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(turnKey()) || "{}");
    return saved && typeof saved === "object" && !Array.isArray(saved) ? saved : {};
  } catch {
    return {};
  }
}

function writeSavedTurns(saved) {
  if (Object.keys(saved).length) sessionStorage.setItem(turnKey(), JSON.stringify(saved));
  else sessionStorage.removeItem(turnKey());
}

function saveTurn(stream) {
  if (!stream.turnId || !stream.threadId) return;
  const saved = { turn_id: stream.turnId, thread_id: stream.threadId, last_event_id: stream.lastEventId };
  // Entry ids start with the Redis clock: how far this browser's clock is ahead of it tells, after a reload,
  // which replayed entries were written before the page came back.
  if (stream.lastEventId) saved.clock_offset_ms = Date.now() - entryTime(stream.lastEventId);
  writeSavedTurns({ ...readSavedTurns(), [stream.threadId]: saved });
}

function forgetTurn(stream) {
  const saved = readSavedTurns();
  if (stream.threadId && saved[stream.threadId]?.turn_id === stream.turnId) {
    delete saved[stream.threadId];
    writeSavedTurns(saved);
  }
}

/** The streams of a thread (the open one's, when `threadId` is null: a new thread not created yet). */
function streamsOf(threadId) {
  return [...state.streams].filter((stream) => stream.threadId === threadId);
}

/** Every thread has a turn state of its own: the composer, Stop and the typing dots follow the open thread's. */
function updateTurnState() {
  const open = streamsOf(state.threadId);
  const streaming = open.length > 0;
  document.body.dataset.turnState = streaming ? "streaming" : "idle";
  const stopWasFocused = document.activeElement === ui.stopBtn;
  ui.stopBtn.hidden = !streaming;
  ui.sendBtn.hidden = streaming;
  // Stop leaves no button under the keyboard: it goes back to the message box.
  if (stopWasFocused && !streaming) ui.input.focus();
  ui.typing.hidden = !open.some((stream) => !stream.shown);
  updateSendEnabled();
  for (const row of ui.threadList.querySelectorAll('[data-testid="thread-item"]')) {
    const writing = threadWriting(row.dataset.threadId);
    if ((row.dataset.writing === "true") !== writing) {
      renderThreadList();
      break;
    }
  }
}

function showProgress(text) {
  ui.progressText.textContent = text;
  ui.progress.hidden = false;
  scrollToEnd();
}

function hideProgress() {
  ui.progress.hidden = true;
  ui.progressText.textContent = "";
}

function showNotice(event) {
  const node = el("div", "notice");
  node.dataset.testid = "notice";
  node.dataset.level = event.level || "info";
  node.setAttribute("role", event.level === "danger" ? "alert" : "status");
  node.append(icon(event.level === "info" ? "info" : "warning", { size: 16 }));
  const text = el("div", "notice-text");
  if (event.title) text.append(el("strong", "", event.title));
  const message = el("div", "md");
  message.append(renderMarkdown(event.message || ""));
  text.append(message);
  node.append(text);
  ui.messages.append(node);
  ui.empty.hidden = true;
  scrollToEnd();
}

/** Something of the reply shows now: the typing dots give way to it. */
function shown(stream) {
  if (stream.shown) return;
  stream.shown = true;
  updateTurnState();
}

/** A reply is read out once, when it is done (the conversation itself is not a live region). */
function announce(item) {
  const text = (item.content || []).map((part) => part.text || "").join(" ").replace(/\s+/g, " ").trim();
  if (!text) return;
  ui.announcer.textContent = "";
  // A change of text in a live region is what a screen reader reads: emptied first, so the same words twice are read.
  requestAnimationFrame(() => {
    ui.announcer.textContent = `kitrelay replied: ${text.length > 600 ? `${text.slice(0, 600)}…` : text}`;
  });
}

function handleEvent(stream, { id, data: event }) {
  stream.started = true;
  if (id) {
    stream.lastEventId = id;
    saveTurn(stream);
  }
  const visible = () => stream.threadId && stream.threadId === state.threadId;
  switch (event.type) {
    case "thread.created":
      stream.threadId = event.thread.id;
      if (!state.threadId && stream.createdHere) {
        state.threadId = event.thread.id;
        sessionStorage.setItem(threadKey(), event.thread.id);
        showInUrl(event.thread.id, { push: false });
      }
      upsertThread(event.thread);
      updateTurnState();
      break;
    case "thread.updated":
      upsertThread(event.thread);
      break;
    case "client_effect":
      if (event.name === "kitrelay.turn" && event.data?.turn_id) {
        stream.turnId = event.data.turn_id;
        stream.threadId ||= event.data.thread_id;
        saveTurn(stream);
        if (stream.stopRequested) cancelTurn(stream);
      }
      break;
    // A replayed stream (re-attach after a reload) repeats what the saved thread already shows: an item shown
    // finished stays as it is (its added and updates are ignored, its done shows the same), one still being
    // written is rebuilt from its added and deltas, and one withdrawn stays gone.
    case "thread.item.added":
      if (!visible()) break;
      hideProgress(); // the progress line tells what leads up to the next item: here it is
      if (event.item.type !== "user_message") shown(stream);
      if (stream.removed.has(event.item.id) || state.items.get(event.item.id)?.final) break;
      upsertItem(event.item, { streaming: event.item.type === "assistant_message" });
      break;
    case "thread.item.done":
    case "thread.item.replaced": {
      if (!visible() || stream.removed.has(event.item.id)) break;
      if (event.item.type !== "user_message") shown(stream);
      const before = state.items.get(event.item.id);
      if (before?.final && before.node?.isConnected && sameItem(before.item, event.item)) break;
      // Final: an update still in flight behind it (a stopped reply's last delta) must not undo it.
      upsertItem(event.item, { final: true });
      if (event.type === "thread.item.done" && event.item.type === "assistant_message" && !stream.catchingUp) {
        announce(event.item);
      }
      break;
    }
    case "thread.item.updated":
      if (visible() && !stream.removed.has(event.item_id)) {
        shown(stream);
        applyUpdate(event, stream.threadId);
      }
      break;
    case "thread.item.removed":
      stream.removed.add(event.item_id);
      if (visible()) removeItem(event.item_id);
      break;
    case "progress_update":
      if (visible()) {
        shown(stream);
        showProgress(event.text || "Working…");
      }
      break;
    case "notice":
      if (visible()) {
        shown(stream);
        showNotice(event);
      }
      break;
    case "error":
      shown(stream);
      showError(
        event.message ||
          (event.allow_retry ? "Something went wrong while writing the reply. Try again." : "The reply could not be written."),
        event.allow_retry && stream.threadId ? () => retryLastMessage(stream.threadId) : null,
      );
      break;
    default:
      break;
  }
}

/** Run one SSE stream (a message, a widget action, or a re-attach) to its end, re-attaching if it drops.
 *
 * `catchUpTo` (a replay from the turn's start after a reload): an entry id written about when the page came back.
 * The events before it are held, then handled and rendered in one go, so the reply so far appears whole instead
 * of being typed out again. Holding also ends once the replay goes quiet (nothing new is being written). */
async function runStream(
  open,
  {
    threadId = null, turnId = null, lastEventId = null, catchUpTo = null, stopRequested = false, createdHere = false,
    quiet = false,
  } = {},
) {
  const stream = {
    controller: new AbortController(), threadId, turnId, lastEventId, stopRequested, started: false, following: true,
    // Items withdrawn during this stream (a superseded attempt): later events of theirs must not bring them back.
    removed: new Set(),
    // Whether anything of its reply shows yet (until then, typing dots); a widget click shows no dots (`quiet`).
    shown: quiet,
    createdHere,
    catchingUp: Boolean(catchUpTo),
  };
  state.streams.add(stream);
  updateTurnState();
  clearError();
  const held = [];
  let catchingUp = Boolean(catchUpTo);
  let catchUpTimer = 0;
  const catchUp = () => {
    catchingUp = false;
    stream.catchingUp = false;
    clearTimeout(catchUpTimer);
    const events = held.splice(0);
    if (stream.controller.signal.aborted) return; // signed out, or replaced by a replay of its own
    for (const event of events) handleEvent(stream, event);
    renderDirty();
  };
  const deliver = (event) => {
    if (!catchingUp) {
      handleEvent(stream, event);
      return;
    }
    held.push(event);
    if (event.id && !entryBefore(event.id, catchUpTo)) catchUp();
    else {
      clearTimeout(catchUpTimer);
      catchUpTimer = setTimeout(catchUp, CATCH_UP_QUIET_MS);
    }
  };
  let finished = false;
  try {
    let source = open(stream.controller.signal);
    for (let attempt = 0; ; attempt += 1) {
      try {
        for await (const event of source) deliver(event);
        finished = true;
        break;
      } catch (error) {
        if (stream.controller.signal.aborted) break;
        const dropped = !(error instanceof ApiError) || error.status === 0;
        if (!dropped || !stream.turnId || attempt >= REATTACH_TRIES) throw error;
        // What is held is handled first: the stream resumes after the last event handled, never twice.
        if (catchingUp) catchUp();
        // The connection dropped mid-reply: the turn goes on regardless, so follow it from the last event seen.
        await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
        source = followTurn(stream.turnId, stream.lastEventId, stream.controller.signal);
      }
    }
  } catch (error) {
    stream.following = false; // (an openThread below must not replay it)
    if (error instanceof ApiError && error.status === 410 && stream.threadId) {
      // The turn ended long ago and its events are gone: the saved thread has everything.
      finished = true;
      if (stream.threadId === state.threadId) await openThread(stream.threadId);
    } else if (error instanceof ApiError && error.status === 404 && turnId) {
      finished = true;
    } else if (error?.name !== "AbortError") {
      showError(messageOf(error));
    }
  } finally {
    stream.following = false;
    if (catchingUp) catchUp();
    state.streams.delete(stream);
    if (finished || !stream.controller.signal.aborted) forgetTurn(stream);
    const threadBusy = streamsOf(stream.threadId).length > 0;
    if (!threadBusy && stream.threadId === state.threadId) {
      hideProgress();
      let unfinished = false;
      for (const record of state.items.values()) {
        if (record.node?.dataset.streaming === "true") {
          setStreaming(record.node, record, false);
          unfinished = true;
        }
      }
      // A reply the stream never finished (cut, withdrawn): the saved thread says how it ended.
      if (unfinished && stream.threadId && stream.threadId === state.threadId) {
        refreshItems(stream.threadId).catch(() => {});
      }
    }
    updateTurnState();
    loadThreads().catch(() => {});
  }
  return stream;
}

// After a reload the reply being written is not in the saved thread yet (the worker saves an item once it is
// done), so the turn's stream is replayed from its start and matched against what the thread shows; only a
// connection that drops under the same page resumes after its last event id (runStream).
function reattach(saved) {
  // Hold the replay up to what was written by now (by the Redis clock), and at least up to the last event shown
  // (what the tab saved last may lag behind what it showed, so the clock is the better guide).
  let catchUpTo = saved.last_event_id || null;
  if (Number.isFinite(saved.clock_offset_ms)) {
    const now = `${Math.floor(Date.now() - saved.clock_offset_ms)}-0`;
    if (!catchUpTo || entryBefore(catchUpTo, now)) catchUpTo = now;
  }
  runStream((signal) => followTurn(saved.turn_id, null, signal), {
    threadId: saved.thread_id,
    turnId: saved.turn_id,
    catchUpTo,
  });
}

/** Follow `stream`'s turn again from its start in place of `stream`, for its thread just loaded again. The items
 * it was writing go: the replay writes them again, after the saved ones. */
function replayTurn(stream) {
  stream.following = false;
  stream.controller.abort();
  for (const [id, record] of [...state.items]) if (!record.final) removeItem(id);
  runStream((signal) => followTurn(stream.turnId, null, signal), {
    threadId: stream.threadId,
    turnId: stream.turnId,
    catchUpTo: stream.lastEventId,
    stopRequested: stream.stopRequested,
  });
}

/** The time part of a Redis stream entry id ("<ms>-<seq>"). */
function entryTime(id) {
  return Number(id.split("-")[0]);
}

/** Whether Redis stream entry id `id` comes before `other`. */
function entryBefore(id, other) {
  const [ms, seq] = id.split("-").map(Number);
  const [otherMs, otherSeq] = other.split("-").map(Number);
  return ms < otherMs || (ms === otherMs && seq < otherSeq);
}

/** The same item as far as the page shows it (a replayed done of an item the saved thread already shows). */
function sameItem(shown, item) {
  return JSON.stringify(shown) === JSON.stringify(item);
}

async function cancelTurn(stream) {
  try {
    await send(`/turns/${encodeURIComponent(stream.turnId)}/cancel`, { method: "POST" });
  } catch (error) {
    showError(messageOf(error));
  }
}

/** Stop the open thread's reply: other threads' go on. */
function stopOpen() {
  const open = streamsOf(state.threadId);
  if (!open.length) return;
  for (const stream of open) {
    if (stream.stopRequested) continue;
    stream.stopRequested = true;
    // Before the turn id is known the stop waits for it; the reply then ends on its own, saved as stopped.
    if (stream.turnId) cancelTurn(stream);
  }
  showProgress("Stopping…");
  ui.input.focus();
}

// -- sending ----------------------------------------------------------------------------------------------------

function updateSendEnabled() {
  const uploading = state.attachments.some((a) => a.state === "uploading");
  const ready = state.attachments.some((a) => a.state === "ready");
  ui.sendBtn.disabled = streamsOf(state.threadId).length > 0 || uploading || !(ui.input.value.trim() || ready);
}

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 240)}px`;
}

function sendMessage() {
  const text = ui.input.value.trim();
  // One reply at a time per thread: Enter here waits (the text stays); another thread can be written in meanwhile.
  if (streamsOf(state.threadId).length > 0) return;
  if (state.attachments.some((a) => a.state === "uploading")) {
    showError("Wait for the attachments to finish uploading.");
    return;
  }
  const attachments = state.attachments.filter((a) => a.state === "ready").map((a) => a.id);
  if (!text && !attachments.length) return;
  const input = {
    content: text ? [{ type: "input_text", text }] : [],
    attachments,
    inference_options: {},
  };
  const threadId = state.threadId;
  ui.input.value = "";
  autosize();
  state.attachments = [];
  renderChips();
  ui.empty.hidden = true;
  scrollToEnd(true);
  const open = threadId
    ? (signal) => chatkitStream("threads.add_user_message", { thread_id: threadId, input }, signal)
    : (signal) => chatkitStream("threads.create", { input }, signal);
  const running = runStream(open, { threadId, createdHere: !threadId });
  running.then(async (stream) => {
    // Refused before it started (a 4xx): give the text back so nothing typed is lost.
    if (!stream.started && !ui.input.value) {
      ui.input.value = text;
      autosize();
      updateSendEnabled();
    }
  });
}

// threads.retry_after_item answers the last user message again; the server drops what came after it without
// telling, so the page drops it too.
function retryLastMessage(threadId) {
  if (threadId !== state.threadId || streamsOf(threadId).length) return;
  const users = ui.messages.querySelectorAll('[data-role="user"]');
  const last = users[users.length - 1];
  if (!last) return;
  clearError();
  while (last.nextElementSibling) {
    const next = last.nextElementSibling;
    if (next.dataset.itemId) state.items.delete(next.dataset.itemId);
    next.remove();
  }
  runStream(
    (signal) => chatkitStream("threads.retry_after_item", { thread_id: threadId, item_id: last.dataset.itemId }, signal),
    { threadId },
  );
}

// Actions a widget hands to the client (ChatKit's handler "client").
const CLIENT_ACTIONS = {
  "document.open": (payload, source) => openDocument({ documentId: payload.document_id, passage: payload.passage ?? null }, source),
};

function widgetAction(record, action, source) {
  if (!action) return;
  if (action.handler === "client") {
    CLIENT_ACTIONS[action.type]?.(action.payload || {}, source);
    return;
  }
  const threadId = state.threadId;
  if (!threadId) return;
  const widget = record.node;
  widget?.setAttribute("aria-busy", "true");
  source?.classList.add("is-loading");
  runStream(
    (signal) =>
      chatkitStream(
        "threads.custom_action",
        { thread_id: threadId, item_id: record.item.id, action: { type: action.type, payload: action.payload ?? {} } },
        signal,
      ),
    { threadId, quiet: true },
  ).finally(() => {
    widget?.removeAttribute("aria-busy");
    source?.classList.remove("is-loading");
  });
}

function showVote(record, kind) {
  for (const button of record.actions.querySelectorAll("button.feedback")) {
    button.setAttribute("aria-pressed", button.dataset.kind === kind ? "true" : "false");
  }
}

async function giveFeedback(record, kind) {
  try {
    await chatkit("items.feedback", { thread_id: record.item.thread_id || state.threadId, item_ids: [record.item.id], kind });
    state.feedback.set(record.item.id, kind);
    showVote(record, kind);
    toast("Thanks: your feedback was recorded.");
  } catch (error) {
    showError(messageOf(error));
  }
}

// -- attachments ------------------------------------------------------------------------------------------------

function chip(name, chipState, onRemove) {
  const node = el("span", "attachment-chip");
  node.dataset.testid = "attachment-chip";
  node.dataset.state = chipState;
  node.append(icon(chipState === "error" ? "alert-circle" : "document", { size: 14 }), el("span", "chip-name", name));
  if (chipState === "uploading") node.append(el("span", "spinner spinner-sm"));
  if (onRemove) {
    const remove = el("button", "chip-remove");
    remove.type = "button";
    remove.setAttribute("aria-label", `Remove ${name}`);
    remove.append(icon("x", { size: 12 }));
    remove.addEventListener("click", onRemove);
    node.append(remove);
  }
  return node;
}

function renderChips() {
  ui.chips.replaceChildren(
    ...state.attachments.map((attachment) => {
      const node = chip(attachment.name, attachment.state, () => {
        state.attachments = state.attachments.filter((a) => a !== attachment);
        if (attachment.id && attachment.state !== "error") {
          chatkit("attachments.delete", { attachment_id: attachment.id }).catch(() => {});
        }
        renderChips();
      });
      if (attachment.error) node.title = attachment.error;
      return node;
    }),
  );
  ui.chips.hidden = !state.attachments.length;
  updateSendEnabled();
}

// The upload URL names this gateway (PUBLIC_BASE_URL); when the page was opened under another name for the same
// server (localhost vs 127.0.0.1), post to the same path on this origin, so no CORS is involved.
function uploadUrl(url) {
  const target = new URL(url, location.href);
  if (target.origin !== location.origin && /^\/attachments\/[^/]+\/upload$/.test(target.pathname)) {
    return target.pathname + target.search;
  }
  return target.href;
}

async function upload(file) {
  const attachment = { name: file.name, state: "uploading", id: null, error: null };
  state.attachments.push(attachment);
  renderChips();
  try {
    const extension = file.name.split(".").pop()?.toLowerCase() || "";
    const mime = MIME_BY_EXTENSION[extension] || file.type || "application/octet-stream";
    const created = await chatkit("attachments.create", { name: file.name, size: file.size, mime_type: mime });
    attachment.id = created.id;
    const descriptor = created.upload_descriptor;
    if (descriptor?.url) {
      const form = new FormData();
      form.append("file", new File([file], file.name, { type: mime }));
      await send(uploadUrl(descriptor.url), { method: descriptor.method || "POST", body: form, headers: descriptor.headers || {} });
    }
    attachment.state = "ready";
  } catch (error) {
    attachment.state = "error";
    attachment.error = messageOf(error);
    showError(attachment.error.includes(file.name) ? attachment.error : `${file.name}: ${attachment.error}`);
  }
  renderChips();
}

// -- layout -----------------------------------------------------------------------------------------------------

// On a phone the sidebar is a drawer over the page: while it is open the page behind is inert (Tab stays in the
// drawer, nothing behind it can be clicked), and closing it gives the keyboard back to the menu button.
const narrow = matchMedia("(max-width: 720px)");

function drawerOpen() {
  return ui.sidebar.classList.contains("open");
}

function openSidebar() {
  ui.sidebar.classList.add("open");
  ui.scrim.hidden = false;
  ui.sidebarOpen.setAttribute("aria-expanded", "true");
  if (narrow.matches) {
    ui.main.inert = true;
    document.querySelector(".skip-link").inert = true;
    ui.sidebar.setAttribute("role", "dialog");
    ui.sidebar.setAttribute("aria-modal", "true");
    $("sidebar-close").focus();
  }
}

function closeSidebar({ restoreFocus = true } = {}) {
  const wasOpen = drawerOpen();
  ui.sidebar.classList.remove("open");
  ui.scrim.hidden = true;
  ui.sidebarOpen.setAttribute("aria-expanded", "false");
  ui.main.inert = false;
  document.querySelector(".skip-link").inert = false;
  ui.sidebar.removeAttribute("role");
  ui.sidebar.removeAttribute("aria-modal");
  if (wasOpen && restoreFocus && narrow.matches) ui.sidebarOpen.focus();
}

/** Tab and Shift+Tab go round the open drawer, from its last control to its first and back. */
function trapDrawerFocus(event) {
  if (event.key !== "Tab" || !drawerOpen() || !narrow.matches) return;
  const controls = focusables(ui.sidebar).filter(
    (node) => !node.disabled && node.getClientRects().length && getComputedStyle(node).visibility !== "hidden",
  );
  if (!controls.length) return;
  const first = controls[0];
  const last = controls[controls.length - 1];
  const inside = ui.sidebar.contains(document.activeElement);
  if (event.shiftKey && (document.activeElement === first || !inside)) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && (document.activeElement === last || !inside)) {
    event.preventDefault();
    first.focus();
  }
}

// -- documents --------------------------------------------------------------------------------------------------

/** Open a cited document at its passage (a chip, a [n] marker, a sources card's button). */
async function openDocument({ documentId, passage }, opener) {
  try {
    const doc = await getJson(`/documents/${encodeURIComponent(documentId)}`);
    ui.docTitle.textContent = doc.title;
    const kind = doc.source === "upload" ? "Uploaded file" : "Knowledge base";
    ui.docMeta.textContent = `${kind} · ${doc.passages.length} passage${doc.passages.length === 1 ? "" : "s"}`;
    let cited = null;
    ui.docPassages.replaceChildren(
      ...doc.passages.map((part) => {
        const section = el("section", "passage");
        section.dataset.position = String(part.position);
        if (part.heading) section.append(el("h3", "passage-heading", part.heading));
        section.append(renderMarkdown(part.text));
        if (part.position === passage) {
          section.dataset.cited = "true";
          section.dataset.testid = "cited-passage";
          section.tabIndex = -1;
          section.setAttribute("aria-label", "The cited passage");
          cited = section;
        }
        return section;
      }),
    );
    ui.docDownload.hidden = !doc.attachment_id;
    ui.docDownload.onclick = doc.attachment_id ? (event) => download(event, doc.attachment_id, doc.title) : null;
    ui.docViewer.onclose = () => opener?.focus();
    ui.docViewer.showModal();
    (cited || ui.docPassages).scrollIntoView({ block: "center" });
    (cited || ui.docPassages).focus();
  } catch (error) {
    showError(error instanceof ApiError && error.status === 404 ? "That document is no longer in your team's knowledge base." : messageOf(error));
  }
}

async function download(event, attachmentId, title) {
  event.preventDefault();
  try {
    const response = await send(`/attachments/${encodeURIComponent(attachmentId)}`);
    const url = URL.createObjectURL(await response.blob());
    const link = el("a");
    link.href = url;
    link.download = title;
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (error) {
    showError(messageOf(error));
  }
}

// -- start ------------------------------------------------------------------------------------------------------

function bind() {
  fillIcons();
  $("sidebar-open").append(icon("menu"));
  $("sidebar-close").append(icon("x"));
  $("error-close").append(icon("x", { size: 14 }));
  ui.signout.append(icon("sign-out"));
  ui.signinForm.addEventListener("submit", submitSignIn);
  ui.signout.addEventListener("click", signOut);
  ui.newThread.addEventListener("click", () => newThread());
  $("document-close").append(icon("x"));
  $("document-close").addEventListener("click", () => ui.docViewer.close());
  $("sidebar-open").addEventListener("click", openSidebar);
  $("sidebar-close").addEventListener("click", () => closeSidebar());
  ui.scrim.addEventListener("click", () => closeSidebar());
  narrow.addEventListener("change", () => closeSidebar({ restoreFocus: false }));
  document.addEventListener("keydown", trapDrawerFocus);
  ui.search.addEventListener("input", onSearch);
  window.addEventListener("popstate", () => {
    if (ui.app.hidden) return;
    const threadId = threadInUrl();
    if (threadId && threadId !== state.threadId) openThread(threadId, { push: false });
    else if (!threadId && state.threadId) newThread({ push: false });
  });
  $("error-close").addEventListener("click", clearError);
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });
  ui.input.addEventListener("input", () => {
    autosize();
    updateSendEnabled();
  });
  ui.stopBtn.addEventListener("click", stopOpen);
  ui.scroller.addEventListener("scroll", () => (stick = nearBottom()), { passive: true });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || event.defaultPrevented) return;
    if (document.querySelector("dialog[open]")) return; // the dialog closes itself
    if (drawerOpen()) closeSidebar();
    else if (streamsOf(state.threadId).length) stopOpen();
  });
  ui.attach.addEventListener("change", () => {
    for (const file of ui.attach.files) upload(file);
    ui.attach.value = "";
  });
  for (const suggestion of document.querySelectorAll(".suggestion")) {
    suggestion.addEventListener("click", () => {
      ui.input.value = suggestion.textContent;
      sendMessage();
    });
  }
  window.addEventListener(UNAUTHORIZED_EVENT, (event) => {
    if (state.config?.mode !== "jwt" || ui.app.hidden) return;
    for (const stream of state.streams) stream.controller.abort();
    stopTeamEvents();
    session.signOut();
    resetConversation();
    showSignIn(event.detail || "Sign in again.");
  });
}

async function start() {
  bind();
  try {
    state.config = await getJson("/auth/config", { auth: false });
  } catch (error) {
    document.body.replaceChildren(el("p", "fatal", `kitrelay cannot be reached: ${messageOf(error)}`));
    return;
  }
  const code = takeSignInCode();
  if (code && state.config.mode === "jwt" && state.config.dev_sign_in) {
    try {
      await redeemSignInCode(code);
    } catch (error) {
      showSignIn(messageOf(error));
      return;
    }
    if (!session.token) {
      showSignIn();
      return;
    }
  }
  if (state.config.mode === "jwt" && !session.token) {
    showSignIn();
    return;
  }
  try {
    await enterApp();
  } catch (error) {
    if (state.config.mode === "jwt") {
      session.signOut();
      showSignIn(messageOf(error));
    } else {
      ui.app.hidden = false;
      showError(messageOf(error));
    }
  }
}

start();
