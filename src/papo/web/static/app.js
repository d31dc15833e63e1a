// papo web app: one module, no build. Pages are rendered on the server; this adds live updates,
// streaming replies and actions through the same /api/v1 endpoints every client uses.
// Every piece of user or model text reaches the DOM through textContent, or as HTML the server
// sanitised (nh3): nothing here builds markup from strings.

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];
const csrf = $('meta[name="csrf-token"]')?.content ?? "";
const strings = JSON.parse($("#papo-i18n")?.textContent || "{}");
const t = (key) => strings[key] ?? key;
const DRAFT_KEY = "papo:draft:" + location.pathname;

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// The documents a reply was drawn from (metadata.knowledge.sources), as _sources.html shows them.
function sourcesNode(metadata) {
  const sources = metadata?.knowledge?.sources || [];
  if (!sources.length) return null;
  const items = sources.map((s) =>
    element(
      "li",
      { value: String(s.n) },
      element("span", { class: "source-title", text: s.title + (s.page ? ` · ${t("chat.page")} ${s.page}` : "") }),
      element("blockquote", { text: s.excerpt }),
    ),
  );
  return element("details", { class: "sources" }, element("summary", { text: `${t("chat.sources")} (${sources.length})` }), element("ol", {}, ...items));
}

// One tool call of a reply (role `tool`), as _tool_call.html shows it, placed above the reply it fed.
function toolCallNode(message) {
  const call = message.metadata || {};
  const ms = call.duration_ms === undefined || call.duration_ms === null ? "" : ` · ${Math.round(call.duration_ms)} ms`;
  return element(
    "li",
    { class: "msg tool", id: `m-${message.id}`, "data-id": message.id, "data-role": "tool", "data-reply": call.reply_id || "" },
    element(
      "details",
      { class: "tool-call" },
      element(
        "summary",
        {},
        element("span", { class: "tool-name", text: `${t("chat.tool")}: ${call.tool || "?"}` }),
        " · ",
        element("span", { class: call.ok ? "ok" : "failed", text: t(call.ok ? "chat.tool_ok" : "chat.tool_failed") }),
        ms,
      ),
      element(
        "div",
        { class: "tool-detail" },
        element("div", { class: "muted", text: t("chat.tool_arguments") }),
        element("pre", { text: call.arguments || "" }),
        element("div", { class: "muted", text: t("chat.tool_result") }),
        element("pre", { text: (message.content || "").slice(0, 4000) }),
      ),
    ),
  );
}

function placeToolCall(list, message) {
  const node = toolCallNode(message);
  const reply = message.metadata?.reply_id && document.getElementById(`m-${message.metadata.reply_id}`);
  if (reply && reply.parentNode === list) list.insertBefore(node, reply);
  else list.append(node);
  return node;
}

// Why a file was not sent, as [text for the person, the server's detail].
async function fileRefusal(response, unsupported) {
  const detail = (await response.json().catch(() => ({}))).detail || "";
  if (response.status === 413) return [t("media.too_large"), detail];
  if (response.status === 415) return [unsupported, detail];
  if (response.status === 422 && /empty/.test(detail)) return [t("media.empty"), detail];
  return [`${t("inbox.send_failed")}: ${detail}`, detail];
}

async function postFile(url, fields) {
  const body = new FormData();
  for (const [name, value] of Object.entries(fields)) body.append(name, value);
  return fetch(url, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf }, body });
}

// ---- the API, with the session cookie and the CSRF header -----------------------------------

class SessionEnded extends Error {}

async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    credentials: "same-origin",
    headers: { "X-CSRF-Token": csrf, ...(body !== undefined ? { "Content-Type": "application/json" } : {}) },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  if (response.status === 401) {
    sessionEnded();
    throw new SessionEnded();
  }
  return response;
}

function sessionEnded() {
  // keep what was being typed; sign-in brings the person back here
  const input = $("#composer-input");
  if (input?.value) localStorage.setItem(DRAFT_KEY, input.value);
  location.assign("/login?next=" + encodeURIComponent(location.pathname));
}

// ---- preferences: theme applies at once, both are remembered by the server ---------------------

for (const select of $$("select[data-autosubmit]")) {
  select.addEventListener("change", () => {
    if (select.name === "theme") document.documentElement.dataset.theme = select.value;
    select.form.requestSubmit();
  });
}

// ---- realtime: one socket, resumed after drops, with a small "reconnecting" notice -----------

const handlers = new Set();
// the page was rendered from data read after this cursor: resume from it, miss nothing
let lastEventId = document.body.dataset.since ? Number(document.body.dataset.since) : null;

async function realtimeToken() {
  const response = await api("POST", "/web/realtime-token");
  if (!response.ok) throw new Error("no realtime token");
  return (await response.json()).token;
}

function connectRealtime() {
  if (!$("[data-page]")) return;
  const status = $("#rt-status");
  let attempt = 0;
  let refresh = null;
  const open = async () => {
    let token;
    try {
      token = await realtimeToken();
    } catch (error) {
      if (error instanceof SessionEnded) return;
      return retry();
    }
    const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/realtime`);
    socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "auth", token, since: lastEventId })));
    socket.addEventListener("message", (raw) => {
      const message = JSON.parse(raw.data);
      if (message.type === "ready") {
        attempt = 0;
        status.hidden = true;
        if (lastEventId === null) lastEventId = message.id;
      } else if (message.type === "event" || message.type === "live") {
        if (message.type === "event") lastEventId = message.id;
        for (const handle of handlers) handle(message.event, message.data);
      } else if (message.type === "resync") {
        location.reload();
      }
    });
    refresh = setInterval(async () => {
      try {
        socket.send(JSON.stringify({ type: "auth", token: await realtimeToken() }));
      } catch {
        /* the next reconnect gets a fresh token */
      }
    }, 240_000);
    socket.addEventListener("close", (event) => {
      clearInterval(refresh);
      if (event.code === 4001 || event.code === 4003) {
        api("GET", "/api/v1/me").catch(() => {}); // a 401 here leads to sign-in
      }
      retry();
    });
  };
  const retry = () => {
    status.hidden = false;
    attempt += 1;
    setTimeout(open, Math.min(5000, 200 * 2 ** Math.min(attempt, 5)) * (0.5 + Math.random() / 2));
  };
  open();
}

// ---- the chat list (dashboard and sidebar) ------------------------------------------------------

function chatItem(chat) {
  const link = element(
    "a",
    { href: `/chats/${chat.id}` },
    element("span", { class: "title", text: chat.title || t("dash.untitled") }),
    element("span", { class: "preview", text: chat.preview || "" }),
    element("time", { datetime: chat.last_message_at || chat.created_at, text: ago(chat.last_message_at || chat.created_at) }),
  );
  return element("li", { class: "chat-item", "data-id": chat.id }, link);
}

// "há 11 segundos" / "11 seconds ago", as the server writes the list: every time in it reads alike,
// and they are brought up to date every minute.
const AGO_UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(1, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  const [unit, size] = AGO_UNITS.find(([, size]) => seconds >= size) || AGO_UNITS.at(-1);
  return new Intl.RelativeTimeFormat(document.documentElement.lang, { numeric: "always" }).format(-Math.floor(seconds / size), unit);
}
setInterval(() => $$(".chats time[datetime]").forEach((time) => (time.textContent = ago(time.dateTime))), 60_000);

// The home page's message box starts a chat: Enter sends, Shift+Enter breaks the line.
function setupHomeComposer() {
  const input = $("#home-input");
  input?.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && input.value.trim()) {
      event.preventDefault();
      input.form.requestSubmit();
    }
  });
}

// Menus (the chat's ⋯, the account): a chosen item, a click elsewhere or Escape closes them.
function setupMenus() {
  const menus = $$("details.chat-menu, details.account");
  const closeAll = (except) => menus.forEach((menu) => menu !== except && menu.removeAttribute("open"));
  document.addEventListener("click", (event) => {
    const inside = event.target.closest("details.chat-menu, details.account");
    closeAll(inside);
    if (inside && event.target.closest(".menu a, .menu button")) inside.removeAttribute("open");
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    const open = menus.find((menu) => menu.open);
    if (!open) return;
    open.removeAttribute("open");
    open.querySelector("summary").focus();
  });
}

// A panel opened by its toggle button(s): the open state is a class on `host`; Escape, a tap outside
// `inside`, or toggling again closes it. Opening focuses the panel's first control.
function openable({ toggles, host, openClass, inside, first, refocus = false }) {
  const isOpen = () => host.classList.contains(openClass);
  const open = (yes) => {
    host.classList.toggle(openClass, yes);
    for (const toggle of toggles) toggle.setAttribute("aria-expanded", String(yes));
    if (yes) $(first)?.focus();
  };
  for (const toggle of toggles) toggle.addEventListener("click", () => open(!isOpen()));
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || !isOpen()) return;
    open(false);
    if (refocus) toggles[0].focus();
  });
  document.addEventListener("click", (event) => {
    if (isOpen() && !event.target.closest(inside)) open(false);
  });
}

// On a phone the chat list is a drawer: ☰ opens it, Escape, a tap beside it or a chosen chat closes it.
function setupDrawer() {
  const toggles = $$("[data-drawer]");
  if (!toggles.length) return;
  openable({ toggles, host: document.body, openClass: "drawer-open", inside: "#chatlist, [data-drawer]", first: "#chatlist a, #chatlist button" });
}

// The inbox's conversation tools on a phone: ⋯ opens them under the header.
function setupHeadTools() {
  const toggle = $("[data-head-tools]");
  if (!toggle) return;
  openable({
    toggles: [toggle],
    host: toggle.closest(".chat-head"),
    openClass: "tools-open",
    inside: ".chat-head",
    first: "#head-tools input, #head-tools select, #head-tools button",
    refocus: true,
  });
}

// The composer's paperclip is a button (reachable by keyboard) that opens its hidden file input.
function setupFilePickers() {
  for (const button of $$("[data-pick]")) {
    button.addEventListener("click", () => document.getElementById(button.dataset.pick)?.click());
  }
}

function setupChatList() {
  const list = $("#chats");
  if (!list) return;
  const listing = list.dataset.status;
  const empty = $("#chats-empty");
  const refreshEmpty = () => (empty.hidden = list.children.length > 0);
  const find = (id) => $(`.chat-item[data-id="${CSS.escape(id)}"]`, list);
  const toTop = (item) => list.prepend(item);

  handlers.add((event, data) => {
    if (event === "session.created" && listing === "active") {
      if (!find(data.id)) toTop(chatItem(data));
    } else if (event === "session.updated") {
      const title = find(data.id)?.querySelector(".title");
      if (title) title.textContent = data.title || t("dash.untitled");
    } else if (["session.archived", "session.unarchived", "session.restored", "session.deleted"].includes(event)) {
      const belongs = (event === "session.archived" && listing === "archived") || (event !== "session.archived" && event !== "session.deleted" && listing === "active");
      const item = find(data.id);
      if (belongs && !item) toTop(chatItem(data));
      else if (!belongs) item?.remove();
    } else if (event === "message.created") {
      const item = find(data.session_id);
      if (item) {
        if (data.content && data.role !== "tool") item.querySelector(".preview").textContent = data.content.slice(0, 140);
        const time = item.querySelector("time");
        time.dateTime = data.created_at;
        time.textContent = ago(data.created_at);
        toTop(item);
      }
    }
    refreshEmpty();
  });

  $("#load-more")?.addEventListener("click", async (event) => {
    const button = event.currentTarget;
    const response = await api("GET", `/api/v1/sessions?status=${listing}&limit=50&cursor=${encodeURIComponent(button.dataset.cursor)}`);
    if (!response.ok) return;
    const page = await response.json();
    for (const chat of page.items) if (!find(chat.id)) list.append(chatItem(chat));
    if (page.next_cursor) button.dataset.cursor = page.next_cursor;
    else button.remove();
  });

  setupSearch();
  setupUndo();
}

function setupUndo() {
  // a chat deleted from its page lands here with ?deleted=<id>: offer to bring it back
  const deleted = new URLSearchParams(location.search).get("deleted");
  const toast = $("#toast");
  if (!deleted || !toast) return;
  toast.hidden = false;
  history.replaceState(null, "", location.pathname);
  const hide = setTimeout(() => (toast.hidden = true), 10_000);
  $("#undo-delete").addEventListener("click", async () => {
    clearTimeout(hide);
    const response = await api("POST", `/api/v1/sessions/${deleted}/restore`);
    if (response.ok) location.assign(`/chats/${deleted}`);
  });
}

function setupChatActions(sessionId) {
  const title = $("#chat-title");
  const actions = {
    rename: () => {
      const form = element("form", { class: "rename" });
      const input = element("input", { type: "text", maxlength: 200, "aria-label": t("dash.rename") });
      input.value = title.textContent;
      form.append(input);
      title.replaceChildren(form);
      input.focus();
      input.select();
      const done = async (save) => {
        const value = input.value.trim();
        if (save && value) {
          const response = await api("PATCH", `/api/v1/sessions/${sessionId}`, { title: value });
          if (response.ok) title.textContent = (await response.json()).title;
          return;
        }
        title.textContent = document.title.split(" · ")[0];
      };
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        done(true);
      });
      input.addEventListener("keydown", (event) => event.key === "Escape" && done(false));
      input.addEventListener("blur", () => done(true));
    },
    archive: async () => {
      if ((await api("POST", `/api/v1/sessions/${sessionId}/archive`)).ok) location.assign("/");
    },
    unarchive: async () => {
      if ((await api("POST", `/api/v1/sessions/${sessionId}/unarchive`)).ok) location.reload();
    },
    delete: async () => {
      if ((await api("DELETE", `/api/v1/sessions/${sessionId}`)).ok) location.assign(`/?deleted=${sessionId}`);
    },
  };
  for (const button of $$("[data-chat-action]")) {
    button.addEventListener("click", () => {
      button.closest("details")?.removeAttribute("open");
      actions[button.dataset.chatAction]();
    });
  }
}

function highlighted(snippet, ranges) {
  const parts = [];
  let at = 0;
  for (const [start, end] of ranges) {
    if (start > at) parts.push(document.createTextNode(snippet.slice(at, start)));
    parts.push(element("mark", { text: snippet.slice(start, end) }));
    at = end;
  }
  parts.push(document.createTextNode(snippet.slice(at)));
  return parts;
}

function setupSearch() {
  const form = $("[data-search]");
  const results = $("#search-results");
  if (!form) return;
  const input = form.elements.q;
  let timer = null;
  let asked = 0;
  const run = async () => {
    const q = input.value.trim();
    const ticket = ++asked;
    if (!q) {
      results.hidden = true;
      results.replaceChildren();
      return;
    }
    const response = await api("GET", `/api/v1/search?q=${encodeURIComponent(q)}&limit=20`);
    if (ticket !== asked || !response.ok) return;
    const page = await response.json();
    const items = page.items.map((hit) =>
      element(
        "li",
        {},
        element(
          "a",
          { href: `/chats/${hit.session_id}#m-${hit.message_id}` },
          element("span", { class: "title", text: hit.session_title || t("dash.untitled") }),
          element("span", { class: "preview" }, ...highlighted(hit.snippet, hit.highlights)),
        ),
      ),
    );
    results.replaceChildren(
      element("h2", { class: "list-heading", text: t("dash.results") }),
      items.length ? element("ul", { class: "chats" }, ...items) : element("p", { class: "muted", text: t("dash.no_results") }),
    );
    results.hidden = false;
  };
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(run, 200);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
}

// ---- the chat view ---------------------------------------------------------------------------

// A streaming reply rebuilt from its saved text plus live deltas placed by offset (see
// papo.client.GrowingReply): deltas past the end wait until a fresher saved text arrives.
class GrowingReply {
  constructor(text = "") {
    this.text = text;
    this.pending = new Map();
  }
  apply(offset, delta) {
    if (offset > this.text.length) this.pending.set(offset, delta);
    else if (offset + delta.length > this.text.length) this.text = this.text.slice(0, offset) + delta;
    this.drain();
  }
  rebase(content) {
    if (content.length > this.text.length) this.text = content;
    this.drain();
  }
  drain() {
    for (const offset of [...this.pending.keys()].sort((a, b) => a - b)) {
      if (offset > this.text.length) return;
      const delta = this.pending.get(offset);
      this.pending.delete(offset);
      if (offset + delta.length > this.text.length) this.text = this.text.slice(0, offset) + delta;
    }
  }
}

const STATUS_KEYS = { streaming: "chat.status.streaming", stopped: "chat.status.stopped", interrupted: "chat.status.interrupted", failed: "chat.status.error" };

function setupChat() {
  const layout = $('[data-page="chat"]');
  if (!layout) return;
  const sessionId = layout.dataset.session;
  const list = $("#messages");
  const input = $("#composer-input");
  const form = $("#composer");
  const stopButton = $("#stop");
  const sendButton = $("#send");
  const live = $("#live");
  const replies = new Map(); // reply id -> GrowingReply, while streaming
  const refetching = new Set();
  setupChatActions(sessionId);

  const find = (id) => $(`#m-${CSS.escape(id)}`);
  const streaming = () => $$('.msg[data-state="streaming"]', list);

  function statusOf(node) {
    const state = node.dataset.state;
    if (node.dataset.role === "assistant" && state === "complete") return ""; // a reply is not "delivered"
    if (node.dataset.role === "assistant" && state) return t(STATUS_KEYS[state] || "chat.status.error");
    return t("chat.status." + (node.dataset.status || "sent"));
  }

  function decorate(node) {
    const meta = node.querySelector(".meta");
    meta.querySelector("[data-status-label]").textContent = statusOf(node);
    meta.querySelectorAll("button").forEach((button) => button.remove());
    const role = node.dataset.role;
    const state = node.dataset.state;
    meta.append(element("button", { type: "button", class: "link", "data-action": "copy", text: t("chat.copy") }));
    if (node.classList.contains("superseded")) return; // an earlier version: read-only
    if (role === "user" && node.dataset.status !== "sending") {
      meta.append(element("button", { type: "button", class: "link", "data-action": "edit", text: t("chat.edit") }));
    }
    if (role === "user" && node.dataset.status === "error") {
      meta.append(element("button", { type: "button", class: "link", "data-action": "resend", text: t("chat.retry") }));
    }
    const isLast = node === $$(".msg.assistant:not(.superseded)", list).at(-1);
    if (role === "assistant" && isLast && state && state !== "streaming") {
      const retry = state === "failed" || state === "interrupted";
      meta.append(element("button", { type: "button", class: "link", "data-action": "regenerate", text: t(retry ? "chat.retry" : "chat.regenerate") }));
    }
    decorateCode(node);
  }

  // Code blocks: the language the model named, and a copy button (also while a reply streams).
  function decorateCode(root) {
    for (const block of root.querySelectorAll(".md pre")) {
      if (block.querySelector(".copy-code")) continue;
      const language = [...(block.querySelector("code")?.classList || [])].find((name) => name.startsWith("language-"));
      if (language) block.prepend(element("span", { class: "code-lang", text: language.slice("language-".length) }));
      block.prepend(element("button", { type: "button", class: "copy-code", "data-action": "copy-code", text: t("chat.copy") }));
    }
  }

  function refreshControls() {
    const busy = streaming().length > 0;
    stopButton.hidden = !busy;
    sendButton.disabled = busy;
    $$(".msg:not(.tool)", list).forEach(decorate);
    $("#chat-empty").hidden = list.children.length > 0;
  }

  function messageNode(message) {
    const node = element(
      "li",
      { class: `msg ${message.role}`, id: `m-${message.id}`, "data-id": message.id, "data-role": message.role, "data-state": message.reply_state || "", "data-status": message.status },
      element("div", { class: "who", text: message.role === "user" ? t("chat.you") : t("chat.assistant") }),
      element("div", { class: "body plain", text: message.content }),
      element("div", { class: "meta" }, element("span", { class: "status", "data-status-label": true })),
    );
    return node;
  }

  function upsert(message) {
    let node = find(message.id);
    if (!node && message.role === "tool") return placeToolCall(list, message);
    if (!node) {
      node = messageNode(message);
      list.append(node);
      node.scrollIntoView({ block: "end" });
    }
    node.dataset.state = message.reply_state || "";
    node.dataset.status = message.status;
    if (message.reply_state === "streaming" && !replies.has(message.id)) replies.set(message.id, new GrowingReply(message.content));
    return node;
  }

  async function showFinal(id) {
    const response = await api("GET", `/web/chats/${sessionId}/messages/${id}`);
    if (!response.ok) return;
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    const message = await response.json();
    const node = upsert(message);
    replies.delete(id);
    const body = node.querySelector(".body");
    if (message.html !== null) {
      const rendered = element("div", { class: "body md" });
      rendered.innerHTML = message.html; // sanitised on the server by nh3
      body.replaceWith(rendered);
      node.querySelector(".sources")?.remove();
      const sources = sourcesNode(message.metadata);
      if (sources) rendered.after(sources);
      live.textContent = message.content.slice(0, 500);
    } else {
      body.textContent = message.content;
    }
    refreshControls();
    if (stick) list.scrollTop = list.scrollHeight; // the action row too, after the final swap
  }

  async function refetchSaved(id) {
    if (refetching.has(id)) return;
    refetching.add(id);
    try {
      const response = await api("GET", `/api/v1/sessions/${sessionId}/messages/${id}`);
      if (response.ok) {
        const message = await response.json();
        replies.get(id)?.rebase(message.content);
        paint(id);
      }
    } finally {
      setTimeout(() => refetching.delete(id), 500);
    }
  }

  // A streaming reply is shown as markdown from its first words: the server renders the text so far
  // with the final render's sanitiser, at most every RENDER_MS and one request at a time per reply.
  const RENDER_MS = 250;
  const rendering = new Map(); // reply id -> { busy, last, again }
  function paint(id) {
    const reply = replies.get(id);
    const node = find(id);
    if (!reply || !node) return;
    const job = rendering.get(id) || { busy: false, last: 0, again: false };
    rendering.set(id, job);
    if (job.busy) {
      job.again = true;
      return;
    }
    const wait = Math.max(0, job.last + RENDER_MS - Date.now());
    job.busy = true;
    setTimeout(async () => {
      const text = replies.get(id)?.text;
      job.last = Date.now();
      try {
        if (text === undefined) return;
        const response = await api("POST", "/web/markdown", { text });
        const current = find(id);
        if (!response.ok || !current || !replies.has(id)) return;
        const { html } = await response.json();
        const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
        const body = current.querySelector(".body");
        const rendered = element("div", { class: "body md" });
        rendered.innerHTML = html; // sanitised on the server by nh3, as the final render
        body.replaceWith(rendered);
        decorateCode(rendered);
        if (stick) current.scrollIntoView({ block: "end" });
      } catch (error) {
        if (!(error instanceof SessionEnded)) throw error;
      } finally {
        job.busy = false;
        if (job.again) {
          job.again = false;
          paint(id);
        } else if (!replies.has(id)) rendering.delete(id);
      }
    }, wait);
  }

  // replies that were streaming when the page was rendered continue from the saved text
  for (const node of streaming()) replies.set(node.dataset.id, new GrowingReply(node.querySelector(".body").textContent));

  handlers.add((event, data) => {
    if (data.session_id !== sessionId && data.id !== sessionId) return;
    if (event === "reply.delta") {
      if (!replies.has(data.id)) {
        upsert({ id: data.id, role: "assistant", content: "", status: "sent", reply_state: "streaming" });
        refreshControls();
      }
      const reply = replies.get(data.id);
      reply.apply(data.offset, data.delta);
      if (reply.pending.size) refetchSaved(data.id);
      paint(data.id);
    } else if (event === "message.created") {
      if (data.role === "user" && $(`.msg[data-status="sending"]`, list)) return; // our own, being confirmed
      upsert(data);
      refreshControls();
    } else if (event === "message.updated") {
      if (data.role === "assistant" && data.reply_state !== "streaming") showFinal(data.id);
      else if (find(data.id)) {
        find(data.id).dataset.status = data.status;
        refreshControls();
      }
    } else if (event === "message.superseded") {
      const gone = find(data.id);
      if (gone && new URLSearchParams(location.search).get("versions")) gone.classList.add("superseded");
      else gone?.remove();
      refreshControls();
    } else if (event === "session.updated" && data.id === sessionId) {
      const title = $("#chat-title");
      title.textContent = data.title || title.dataset.untitled;
      document.title = title.textContent;
    }
  });

  async function send(content, existing) {
    const node = existing || messageNode({ id: "pending-" + Date.now(), role: "user", content, status: "sending" });
    node.dataset.status = "sending";
    if (!existing) list.append(node);
    node.scrollIntoView({ block: "end" });
    refreshControls();
    let response;
    try {
      response = await api("POST", `/api/v1/sessions/${sessionId}/messages`, { content });
    } catch (error) {
      if (error instanceof SessionEnded) return;
      response = null;
    }
    if (!response || !response.ok) {
      node.dataset.status = "error";
      node.dataset.content = content;
      refreshControls();
      return;
    }
    const message = await response.json();
    if (find(message.id)) node.remove(); // the realtime event was faster
    else {
      node.id = `m-${message.id}`;
      node.dataset.id = message.id;
      node.dataset.status = message.status;
    }
    localStorage.removeItem(DRAFT_KEY);
    const replyId = response.headers.get("X-Reply-Id");
    if (replyId) upsert({ id: replyId, role: "assistant", content: "", status: "sent", reply_state: "streaming" });
    refreshControls();
  }

  // A chosen photo or document waits beside the box and goes with what is typed (see /files).
  const pendingFile = $("#chat-pending");
  const fileError = $("#chat-error");
  let picked = null;
  const sayFileError = (text, detail = "") => {
    fileError.textContent = text || "";
    fileError.title = detail;
    fileError.hidden = !text;
  };
  const pickFile = (file) => {
    picked = file;
    pendingFile.hidden = !file;
    pendingFile.querySelector(".name").textContent = file ? file.name : "";
    pendingFile.querySelector(".size").textContent = file ? fileSize(file.size) : "";
  };
  $("#chat-file").addEventListener("change", (event) => {
    pickFile(event.target.files[0] || null);
    event.target.value = "";
    sayFileError("");
    input.focus();
  });
  pendingFile.querySelector("[data-unpick]").addEventListener("click", () => pickFile(null));

  async function sendFile(content, file) {
    pendingFile.querySelector(".sending").hidden = false;
    form.classList.add("busy");
    let response;
    try {
      response = await postFile(`/api/v1/sessions/${sessionId}/files`, { file, content });
    } finally {
      form.classList.remove("busy");
      pendingFile.querySelector(".sending").hidden = true;
    }
    if (response.status === 401) return sessionEnded();
    if (!response.ok) {
      input.value = content;
      return sayFileError(...(await fileRefusal(response, t("chat.file_unsupported"))));
    }
    pickFile(null);
    sayFileError("");
    localStorage.removeItem(DRAFT_KEY);
    const message = await response.json();
    const node = upsert(message);
    if (!node.querySelector(".attachment")) node.querySelector(".body").after(...message.attachments.map(attachmentNode));
    const replyId = response.headers.get("X-Reply-Id");
    if (replyId) upsert({ id: replyId, role: "assistant", content: "", status: "sent", reply_state: "streaming" });
    refreshControls();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = input.value.trim();
    if ((!content && !picked) || streaming().length) return;
    input.value = "";
    autosize();
    if (picked) sendFile(content, picked);
    else send(content);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && streaming().length) stop();
  });
  const autosize = () => {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 240) + "px";
  };
  input.addEventListener("input", autosize);
  input.value = localStorage.getItem(DRAFT_KEY) || "";
  input.addEventListener("input", () => localStorage.setItem(DRAFT_KEY, input.value));

  async function stop() {
    for (const node of streaming()) await api("POST", `/api/v1/sessions/${sessionId}/messages/${node.dataset.id}/stop`);
  }
  stopButton.addEventListener("click", stop);

  list.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const node = button.closest(".msg");
    const action = button.dataset.action;
    if (action === "copy" || action === "copy-code") {
      const text = action === "copy" ? (replies.get(node.dataset.id)?.text ?? node.querySelector(".body").innerText) : button.parentElement.querySelector("code").innerText;
      await navigator.clipboard?.writeText(text);
      button.textContent = t("chat.copied");
      setTimeout(() => (button.textContent = t("chat.copy")), 1500);
    } else if (action === "regenerate") {
      const response = await api("POST", `/api/v1/sessions/${sessionId}/regenerate`);
      if (response.ok) {
        node.remove();
        upsert(await response.json());
        refreshControls();
      }
    } else if (action === "resend") {
      send(node.dataset.content || node.querySelector(".body").textContent, node);
    } else if (action === "edit") {
      editInPlace(node);
    }
  });

  function editInPlace(node) {
    const body = node.querySelector(".body");
    const original = body.textContent;
    const area = element("textarea", { class: "edit", rows: 3, "aria-label": t("chat.edit") });
    area.value = original;
    const save = element("button", { type: "button", class: "primary small", text: t("chat.save_resend") });
    const cancel = element("button", { type: "button", class: "ghost small", text: t("chat.cancel") });
    const editor = element("div", { class: "editor" }, area, element("div", { class: "row" }, save, cancel));
    body.replaceWith(editor);
    area.focus();
    cancel.addEventListener("click", () => editor.replaceWith(body));
    save.addEventListener("click", async () => {
      const content = area.value.trim();
      if (!content) return;
      const response = await api("POST", `/api/v1/sessions/${sessionId}/messages/${node.dataset.id}/edit`, { content });
      if (!response.ok) return;
      const message = await response.json();
      // the old version and what followed are kept on the server (an earlier branch)
      let after = node;
      while (after) {
        const next = after.nextElementSibling;
        after.remove();
        after = next;
      }
      upsert(message);
      const replyId = response.headers.get("X-Reply-Id");
      if (replyId) upsert({ id: replyId, role: "assistant", content: "", status: "sent", reply_state: "streaming" });
      refreshControls();
    });
  }

  refreshControls();
  list.lastElementChild?.scrollIntoView({ block: "end" });
  if (location.hash) document.getElementById(location.hash.slice(1))?.scrollIntoView({ block: "center" });
}

// ---- the WhatsApp inbox (staff) and numbers (admins) ------------------------------------------

const delivery = (status) => (status ? t(`inbox.delivery.${status}`) : "");

function fileSize(bytes) {
  for (const [unit, scale] of [["GB", 1024 ** 3], ["MB", 1024 ** 2], ["KB", 1024]]) {
    if (bytes >= scale) return `${(bytes / scale).toLocaleString(document.documentElement.lang, { maximumFractionDigits: 1 })} ${unit}`;
  }
  return `${bytes} B`;
}

// The same markup as templates/_attachment.html, for attachments that arrive or change live.
function attachmentNode(a) {
  const muted = (text) => element("span", { class: "muted", text });
  const parts = [];
  if (a.kind === "location" && a.data) {
    const { latitude: lat, longitude: lon } = a.data;
    const where = `${lat}, ${lon}${a.data.address ? ` · ${a.data.address}` : ""}`;
    const href = `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lon}#map=17/${lat}/${lon}`;
    parts.push(element("a", { class: "location", href, target: "_blank", rel: "noopener noreferrer" },
      element("strong", { text: a.data.name || t("media.location") }), muted(where)));
  } else if (a.kind === "contacts" && a.data) {
    for (const card of a.data.cards) {
      parts.push(element("div", { class: "card-contact" }, element("strong", { text: card.name || t("media.contact") }),
        ...card.phones.map((phone) => muted(phone.phone)), ...card.emails.map((email) => muted(email))));
    }
  } else if (a.state === "stored" && a.url) {
    if (a.kind === "image" || a.kind === "sticker") {
      parts.push(element("a", { href: a.url, target: "_blank", rel: "noopener", "data-viewer": true },
        element("img", { src: a.url, alt: a.caption || t("media.image"), loading: "lazy" })));
    } else if (a.kind === "audio" || a.kind === "voice") {
      parts.push(element("audio", { controls: true, preload: "none", src: a.url }));
      if (a.transcript) {
        parts.push(element("p", { class: "transcript" }, element("span", { class: "label", text: t("media.transcript") }), a.transcript));
      }
    } else if (a.kind === "video") {
      parts.push(element("video", { controls: true, preload: "metadata", src: a.url }));
    } else {
      parts.push(element("a", { class: "file", href: a.url, download: true },
        element("strong", { text: a.file_name || t("media.document") }), " ", muted(fileSize(a.size))));
    }
  } else if (a.state === "pending") {
    parts.push(muted(a.error ? t("media.unavailable_retrying") : t("media.pending")));
  } else if (a.state === "unavailable") {
    parts.push(muted(t("media.unavailable")));
  } else {
    parts.push(element("span", { class: "muted", title: a.error || "", text: t("media.rejected") }));
  }
  return element("div", { class: `attachment ${a.kind} ${a.state}`, id: `a-${a.id}`, "data-attachment": a.id }, ...parts);
}

function setupInbox() {
  const layout = $('[data-page="inbox"]');
  if (!layout) return;
  const current = layout.dataset.conversation;
  const list = $("#messages");
  const reload = () => location.reload();
  // What the agent has not read: a customer's message elsewhere adds to that conversation's count;
  // in the open one it is read at once (told to the server at most every few seconds).
  let reading = null;
  const readNow = () => {
    if (reading) return;
    reading = setTimeout(() => {
      reading = null;
      api("POST", `/api/v1/whatsapp/conversations/${current}/read`);
    }, 2000);
  };
  const countUnread = (conversationId) => {
    const item = $(`#conversations [data-id="${CSS.escape(conversationId)}"] a`);
    if (!item) return;
    let badge = item.querySelector(".badge.unread");
    if (!badge) {
      badge = element("span", { class: "badge unread", "data-unread": "0" }, element("span", { "aria-hidden": "true" }), element("span", { class: "sr-only" }));
      item.querySelector(".title").after(badge);
    }
    const count = Number(badge.dataset.unread) + 1;
    badge.dataset.unread = String(count);
    badge.firstChild.textContent = String(count);
    badge.lastChild.textContent = t("inbox.unread").replace("{count}", String(count));
  };
  handlers.add((event, data) => {
    if (event === "whatsapp.conversation.updated" && !$(`#conversations [data-id="${CSS.escape(data.id)}"]`)) reload();
    if (event === "message.created" && data.role === "user" && data.session_id !== current) countUnread(data.session_id);
    if (!current || data.session_id !== current) return;
    if (event === "message.created" && data.role === "user") readNow();
    if (event === "message.created" && data.role === "tool" && !$(`#m-${CSS.escape(data.id)}`)) {
      placeToolCall(list, data);
    } else if (event === "message.created" && !$(`#m-${CSS.escape(data.id)}`)) {
      const kind = data.role === "user" || data.role === "note" ? data.role : "assistant";
      const who = { user: t("inbox.customer"), note: t("inbox.note") }[kind] || (data.metadata?.author === "bot" ? t("inbox.bot") : t("inbox.agent"));
      const node = element(
        "li",
        { class: `msg ${kind}`, id: `m-${data.id}`, "data-id": data.id, "data-status": data.status || "" },
        element("div", { class: "who", text: who }),
        element("div", { class: "body plain", text: data.content }),
        sourcesNode(data.metadata),
        ...(data.attachments || []).map(attachmentNode),
        element("div", { class: "meta" }, element("span", { class: "status", "data-delivery": true, text: delivery(data.delivery_status) })),
      );
      list.append(node);
      if (stick) toBottom();
    } else if (event === "reply.delta") {
      const node = $(`#m-${CSS.escape(data.id)}`);
      if (node) node.querySelector(".body").textContent = node.querySelector(".body").textContent.slice(0, data.offset) + data.delta;
    } else if (event === "attachment.updated") {
      $(`#a-${CSS.escape(data.id)}`)?.replaceWith(attachmentNode(data));
      if (stick) toBottom();
    } else if (event === "message.updated" || event === "message.status_changed") {
      const node = $(`#m-${CSS.escape(data.id)}`);
      if (node && data.content !== undefined) node.querySelector(".body").textContent = data.content;
      if (node && data.status) node.dataset.status = data.status;
      if (node && data.delivery_status) {
        const status = node.querySelector("[data-delivery]");
        status.textContent = delivery(data.delivery_status);
        status.title = data.metadata?.error || data.error || status.title;
      }
    }
  });
  // Stay at the newest message while photos and videos load (they grow the list after it scrolled),
  // unless the agent scrolled up to read.
  // Only the agent scrolling up lets go: media growing the list (or this page scrolling it) never moves
  // scrollTop up.
  let stick = true;
  let lastTop = 0;
  const toBottom = () => { if (list) list.scrollTop = list.scrollHeight; };
  list?.addEventListener("scroll", () => {
    if (list.scrollHeight - list.scrollTop - list.clientHeight < 120) stick = true;
    else if (list.scrollTop < lastTop) stick = false;
    lastTop = list.scrollTop;
  });
  for (const loaded of ["load", "loadedmetadata"]) {
    list?.addEventListener(loaded, () => { if (stick) toBottom(); }, true);
  }
  // A photo opens in a viewer over the conversation (the link still opens the file without script).
  const viewer = $("#viewer");
  list?.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-viewer]");
    if (!link || !viewer) return;
    event.preventDefault();
    viewer.querySelector("img").src = link.href;
    viewer.querySelector("img").alt = link.querySelector("img")?.alt || "";
    viewer.querySelector(".caption").textContent = link.closest(".msg")?.querySelector(".body")?.textContent || "";
    viewer.querySelector("a.original").href = link.href;
    viewer.showModal();
  });
  viewer?.addEventListener("click", (event) => {
    if (event.target === viewer || event.target.closest("[data-close]")) viewer.close();
  });
  const url = `/api/v1/whatsapp/conversations/${current}`;
  const me = async () => (await (await api("GET", "/api/v1/me")).json()).user_id;
  const actions = {
    assign: async () => ({ assigned_to: await me() }),
    close: async () => ({ ticket_status: "closed" }),
    reopen: async () => ({ ticket_status: "open" }),
    "bot-on": async () => ({ bot_enabled: true }),
    "bot-off": async () => ({ bot_enabled: false, ticket_status: "open" }),
  };
  for (const button of $$("[data-inbox-action]")) {
    button.addEventListener("click", async () => {
      const response = await api("PATCH", url, await actions[button.dataset.inboxAction]());
      if (response.ok) reload();
    });
  }
  // A chosen file waits beside the reply box (name, size, remove) and goes with what is typed, as its
  // caption, when the agent sends; WhatsApp's limits are checked by the server.
  const form = $("#inbox-reply");
  const pending = $("#inbox-pending");
  const problem = $("#inbox-error");
  let picked = null;
  const say = (text, detail = "") => {
    if (!problem) return;
    problem.textContent = text || "";
    problem.title = detail;
    problem.hidden = !text;
    if (stick) toBottom();
  };
  const pick = (file) => {
    picked = file;
    if (!pending) return;
    pending.hidden = !file;
    pending.querySelector(".name").textContent = file ? file.name : "";
    pending.querySelector(".size").textContent = file ? fileSize(file.size) : "";
    if (stick) toBottom();
  };
  const refuse = async (response) => say(...(await fileRefusal(response, t("media.unsupported"))));
  $("#inbox-file")?.addEventListener("change", (event) => {
    pick(event.target.files[0] || null);
    event.target.value = "";
    say("");
    $("#inbox-input").focus();
  });
  pending?.querySelector("[data-unpick]").addEventListener("click", () => pick(null));
  // A private note goes to the staff only; the box says so while the toggle is on.
  const noteToggle = $("#inbox-note");
  const noting = () => Boolean(noteToggle?.checked);
  noteToggle?.addEventListener("change", () => {
    form.classList.toggle("noting", noting());
    $("#inbox-input").placeholder = noting() ? t("inbox.note_placeholder") : t("inbox.reply_hint");
    $("#inbox-input").focus();
  });
  setupCannedResponses($("#inbox-input"), $("#canned"));
  $("[data-team-select]")?.addEventListener("change", async (event) => {
    const response = await api("PATCH", url, { team_id: event.target.value || null });
    if (!response.ok) say((await response.json().catch(() => ({}))).detail || t("inbox.send_failed"));
  });
  $("[data-labels]")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const labels = $("#labels-input").value.split(",").map((label) => label.trim()).filter(Boolean);
    const response = await api("PATCH", url, { labels });
    if (response.ok) reload();
    else say((await response.json().catch(() => ({}))).detail || t("inbox.send_failed"));
  });
  form?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("#inbox-input");
    const content = input.value.trim();
    if (!content && (!picked || noting())) return;
    const controls = [...form.elements, pending?.querySelector("[data-unpick]")].filter(Boolean);
    form.classList.add("busy");
    for (const control of controls) control.disabled = true;
    pending?.querySelector(".sending")?.toggleAttribute("hidden", !picked);
    try {
      let response;
      if (noting()) {
        response = await api("POST", `${url}/notes`, { content });
      } else if (picked) {
        response = await postFile(`${url}/attachments`, { file: picked, caption: content });
      } else {
        response = await api("POST", `${url}/messages`, { content });
      }
      if (response.ok) {
        input.value = "";
        pick(null);
        say("");
      } else {
        await refuse(response);
      }
    } finally {
      form.classList.remove("busy");
      for (const control of controls) control.disabled = false;
      pending?.querySelector(".sending")?.setAttribute("hidden", "");
    }
  });
  $("#inbox-input")?.addEventListener("keydown", (event) => {
    if (event.defaultPrevented) return; // the canned-response list took the key
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  // Alt+↓ / Alt+↑: the next or previous conversation in the list, from anywhere on the page.
  document.addEventListener("keydown", (event) => {
    if (!event.altKey || (event.key !== "ArrowDown" && event.key !== "ArrowUp")) return;
    const links = $$("#conversations .chat-item a");
    if (!links.length) return;
    event.preventDefault();
    const at = links.findIndex((link) => link.closest(".chat-item").dataset.id === current);
    const next = at < 0 ? 0 : Math.min(links.length - 1, Math.max(0, at + (event.key === "ArrowDown" ? 1 : -1)));
    if (next !== at) links[next].click();
  });
  toBottom();
}

// While documents are being read, the knowledge page shows their progress by reloading itself.
function setupKnowledge() {
  const page = $('[data-page="knowledge"][data-working]');
  if (page) setTimeout(() => location.reload(), 3000);
}

// "/shortcut" in the reply box offers the company's canned responses: ↑/↓ choose, Enter or Tab
// puts the text in the box, Escape closes the list.
function setupCannedResponses(input, listbox) {
  if (!input || !listbox) return;
  let saved = [];
  let shown = [];
  let chosen = 0;
  api("GET", "/api/v1/whatsapp/canned-responses").then(async (response) => {
    if (response.ok) saved = await response.json();
  });
  const close = () => {
    listbox.hidden = true;
    shown = [];
    input.removeAttribute("aria-activedescendant");
  };
  const paint = () => {
    listbox.replaceChildren(
      ...shown.map((item, index) =>
        element(
          "li",
          { role: "option", id: `canned-${index}`, "aria-selected": String(index === chosen), "data-index": index },
          element("strong", { text: "/" + item.shortcut }),
          " ",
          element("span", { class: "muted", text: item.content.slice(0, 90) }),
        ),
      ),
    );
    listbox.hidden = shown.length === 0;
    if (shown.length) input.setAttribute("aria-activedescendant", `canned-${chosen}`);
  };
  const use = (item) => {
    input.value = item.content;
    close();
    input.focus();
  };
  input.addEventListener("input", () => {
    const typed = /^\/([a-z0-9_-]*)$/.exec(input.value);
    shown = typed ? saved.filter((item) => item.shortcut.startsWith(typed[1])).slice(0, 8) : [];
    chosen = 0;
    paint();
  });
  input.addEventListener("keydown", (event) => {
    if (listbox.hidden) return;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      chosen = (chosen + (event.key === "ArrowDown" ? 1 : shown.length - 1)) % shown.length;
      paint();
    } else if (event.key === "Enter" || event.key === "Tab") {
      event.preventDefault();
      use(shown[chosen]);
    } else if (event.key === "Escape") {
      event.preventDefault();
      close();
    }
  });
  listbox.addEventListener("mousedown", (event) => {
    const option = event.target.closest("[data-index]");
    if (!option) return;
    event.preventDefault();
    use(shown[Number(option.dataset.index)]);
  });
}

function setupWhatsappNumbers() {
  if (!$('[data-page="whatsapp"]')) return;
  $("#wa-create").addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await api("POST", "/api/v1/whatsapp/sessions", { name: $("#wa-name").value.trim(), transport: "neonize" });
    if (response.ok) location.reload();
    else alert((await response.json()).detail);
  });
  for (const button of $$("[data-wa-action]")) {
    button.addEventListener("click", async () => {
      const id = button.closest("[data-id]").dataset.id;
      const action = button.dataset.waAction;
      const response = action === "remove" ? await api("DELETE", `/api/v1/whatsapp/sessions/${id}`) : await api("POST", `/api/v1/whatsapp/sessions/${id}/${action}`);
      if (response.ok && action === "remove") location.reload();
    });
  }
  handlers.add((event, data) => {
    if (event !== "whatsapp.session.updated") return;
    const item = $(`.wa-session[data-id="${CSS.escape(data.id)}"]`);
    if (!item) return location.reload();
    item.dataset.status = data.status;
    const badge = item.querySelector("[data-badge]");
    badge.textContent = data.status;
    badge.className = `badge status-${data.status.toLowerCase()}`;
    item.querySelector("[data-phone]").textContent = data.phone_number || "";
    item.querySelector("[data-reason]").textContent = data.status_reason || "";
    const qr = item.querySelector("[data-qr]");
    qr.hidden = !data.has_qr;
    if (data.has_qr) {
      const image = qr.querySelector("img");
      image.src = `${image.dataset.src}?t=${Date.now()}`; // a new code: fetch it again
    }
  });
}

setupDrawer();
setupHeadTools();
setupFilePickers();
setupMenus();
setupHomeComposer();
setupChatList();
setupChat();
setupInbox();
setupWhatsappNumbers();
setupKnowledge();
connectRealtime();
