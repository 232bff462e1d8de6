// Asynchronous calls: the listing with filters and paging, one call's record (with cancel),
// and the dead-letter set (redrive, purge).
import { h, show, field, table, errorBox } from "./dom.js";
import { getJson, change, request, qs } from "./api.js";

const STATES = ["", "queued", "running", "retrying", "succeeded", "failed", "cancelled"];

function badge(state) {
  return h("span", { class: `badge ${state}`, "data-state": state }, state);
}

/** One call as a table row. */
export function callRow(c) {
  return h("tr", { "data-call": c.callId },
    h("td", {}, h("a", { href: `#/call/${encodeURIComponent(c.callId)}` }, c.callId)),
    h("td", {}, badge(c.state), c.deadLetter ? " (dead letter)" : ""),
    h("td", {}, String(c.attempts)),
    h("td", {}, c.statusCode ? String(c.statusCode) : "—"),
    h("td", {}, c.enqueuedAt));
}

export async function callsPage(main, signal, params) {
  const fn = h("input", { id: "calls-function", value: params.get("function") || "", placeholder: "any" });
  const state = h("select", { id: "calls-state" }, STATES.map((s) => h("option", { value: s, selected: s === (params.get("state") || "") }, s || "any")));
  const list = h("div", { id: "calls-list" });
  const pages = [];
  show(main,
    h("h1", {}, "Asynchronous calls"),
    h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); pages.length = 0; load(null); } },
      field("Function", fn, { class: "inline" }), field("State", state, { class: "inline" }),
      h("button", { type: "submit", id: "calls-filter" }, "Show")),
    list);

  async function load(after) {
    try {
      const { data } = await getJson(`/system/async/calls${qs({ function: fn.value.trim(), state: state.value, limit: 50, after })}`);
      const nav = h("div", { class: "row" },
        pages.length ? h("button", { type: "button", id: "calls-prev", onclick: () => load(pages.pop() ?? null) }, "Newer") : null,
        data.next ? h("button", { type: "button", id: "calls-next", onclick: () => { pages.push(after); load(data.next); } }, "Older") : null);
      show(list,
        data.partial ? h("p", { class: "muted" }, "Only the most recently changed calls are listed (JetStream queue).") : null,
        data.calls.length === 0 ? h("p", { class: "muted" }, "No calls.") :
          table(["Call", "State", "Attempts", "Status", "Enqueued"], data.calls.map(callRow), { id: "calls-table" }),
        nav);
    } catch (e) {
      show(list, h("p", { class: "error", role: "alert" }, e.message));
    }
  }
  await load(null);
  const timer = setInterval(() => { if (pages.length === 0) load(null); }, 3000);
  signal.addEventListener("abort", () => clearInterval(timer));
}

export async function callPage(main, signal, callId) {
  const view = h("div", { id: "call" });
  const error = errorBox("call-error");
  show(main, h("h1", {}, `Call ${callId}`), view, error);

  async function cancel() {
    if (!confirm(`Cancel call ${callId}?`)) return;
    try {
      await change("DELETE", `/async-function/${encodeURIComponent(callId)}`);
      load();
    } catch (e) { show(error, e.message); }
  }

  async function load() {
    const r = await request("GET", `/async-function/status/${encodeURIComponent(callId)}`);
    if (!r.ok) { show(view, h("p", { class: "error", role: "alert" }, r.text.trim())); return; }
    const c = JSON.parse(r.text);
    const item = (k, v, id) => [h("dt", {}, k), h("dd", id ? { id } : {}, v ?? "—")];
    show(view,
      h("dl", {},
        item("Function", c.function),
        item("State", badge(c.state), "call-state"),
        item("Dead letter", c.deadLetter ? "yes" : "no"),
        item("Attempts", String(c.attempts), "call-attempts"),
        item("Status code", c.statusCode ? String(c.statusCode) : null),
        item("Last error", c.lastError),
        item("Enqueued", c.enqueuedAt),
        item("Started", c.startedAt),
        item("Finished", c.finishedAt),
        item("Next attempt", c.nextAttemptAt),
        item("Callback", `${c.callback} (${c.callbackAttempts} attempts)`),
        item("Callback error", c.callbackError)),
      h("h2", {}, "Result"),
      c.result !== undefined ? h("pre", { id: "call-result" }, c.result) :
        c.resultBase64 ? h("p", {}, "Binary result (base64): ", h("code", {}, c.resultBase64.slice(0, 200))) : h("p", { class: "muted" }, "No result yet."),
      c.resultTruncated ? h("p", { class: "muted" }, "Cut at the status size cap.") : null,
      c.state === "queued" || c.state === "retrying" ? h("button", { type: "button", class: "danger", id: "call-cancel", onclick: cancel }, "Cancel…") : null);
  }
  await load();
  const timer = setInterval(load, 2000);
  signal.addEventListener("abort", () => clearInterval(timer));
}

export async function deadLettersPage(main, signal) {
  const list = h("div", { id: "dead-list" });
  const error = errorBox("dead-error");
  const pages = [];
  let current = null;
  show(main,
    h("h1", {}, "Dead letters"),
    h("div", { class: "row" },
      h("button", { type: "button", id: "redrive-all", onclick: () => act("POST", "/system/async/dead-letters/redrive", {}, "Redrive every dead letter?") }, "Redrive all…"),
      h("button", { type: "button", class: "danger", id: "purge-all", onclick: () => act("DELETE", "/system/async/dead-letters", {}, "Purge every dead letter? They are gone for good.") }, "Purge all…")),
    error, list);

  async function act(method, path, body, question) {
    if (!confirm(question)) return;
    show(error);
    try {
      const r = await change(method, path, body);
      show(error, h("span", { class: "ok" }, r.text.trim()));
      load(current);
    } catch (e) { show(error, e.message); }
  }

  async function load(after) {
    current = after;
    try {
      const { data, headers } = await getJson(`/system/async/dead-letters${qs({ limit: 50, after })}`);
      const next = headers.get("x-next-after");
      const rows = data.map((c) => h("tr", { "data-call": c.callId },
        h("td", {}, h("a", { href: `#/call/${encodeURIComponent(c.callId)}` }, c.callId)),
        h("td", {}, c.function),
        h("td", {}, String(c.attempts)),
        h("td", {}, c.lastError || (c.statusCode ? `HTTP ${c.statusCode}` : "—")),
        h("td", {}, h("div", { class: "row" },
          h("button", { type: "button", class: "redrive", onclick: () => act("POST", "/system/async/dead-letters/redrive", { callId: c.callId }, `Redrive call ${c.callId}?`) }, "Redrive…"),
          h("button", { type: "button", class: "danger purge", onclick: () => act("DELETE", "/system/async/dead-letters", { callId: c.callId }, `Purge call ${c.callId}?`) }, "Purge…")))));
      show(list,
        data.length === 0 ? h("p", { class: "muted" }, "No dead letters.") :
          table(["Call", "Function", "Attempts", "Last failure", "Actions"], rows, { id: "dead-table" }),
        h("div", { class: "row" },
          pages.length ? h("button", { type: "button", onclick: () => load(pages.pop() ?? null) }, "Previous") : null,
          next ? h("button", { type: "button", onclick: () => { pages.push(after); load(next); } }, "Next") : null));
    } catch (e) {
      show(list, h("p", { class: "error", role: "alert" }, e.message));
    }
  }
  await load(null);
  const timer = setInterval(() => load(current), 3000);
  signal.addEventListener("abort", () => clearInterval(timer));
}
