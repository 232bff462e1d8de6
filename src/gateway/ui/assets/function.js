// One function: details, scale, delete, the invoke panel, its recent async calls and its log.
import { h, show, field, table, errorBox } from "./dom.js";
import { getJson, change, request, qualified, qs, url } from "./api.js";
import { callRow } from "./calls.js";

function headerLines(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (!t) continue;
    const i = t.indexOf(":");
    if (i <= 0) throw new Error(`"${t}" is not Name: value`);
    out[t.slice(0, i).trim()] = t.slice(i + 1).trim();
  }
  return out;
}

/** The body of a response: JSON pretty-printed, text as text, anything else as a download. */
function bodyView(r) {
  const type = r.headers.get("content-type") || "";
  let text = null;
  try { text = new TextDecoder("utf-8", { fatal: true }).decode(r.bytes); } catch { text = null; }
  if (text !== null && /json/.test(type)) {
    try { return h("pre", { id: "invoke-body" }, JSON.stringify(JSON.parse(text), null, 2)); } catch { /* as text */ }
  }
  if (text !== null && !/^(image|audio|video|application\/(octet-stream|zip|pdf))/.test(type)) {
    return h("pre", { id: "invoke-body" }, text);
  }
  const blob = new Blob([r.bytes], { type: type || "application/octet-stream" });
  return h("p", { id: "invoke-body" }, h("a", { href: URL.createObjectURL(blob), download: "response" }, `Download the body (${r.bytes.length} bytes, ${type || "binary"})`));
}

export async function functionPage(main, signal, namespace, name) {
  const target = qualified(name, namespace);
  const details = h("div", { id: "function-details" });
  const calls = h("div", { id: "function-calls" });
  const scaleError = errorBox("scale-error");
  const replicas = h("input", { type: "number", min: "0", max: "100", id: "scale-replicas", required: true });
  const scaleForm = h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); scale(); } },
    field("Replicas", replicas, { class: "inline" }),
    h("button", { type: "submit", id: "scale-submit" }, "Scale"),
    h("button", { type: "button", class: "danger", id: "delete", onclick: remove }, "Delete…"));

  // The invoke panel.
  const result = h("div", { id: "invoke-result", "aria-live": "polite" });
  const method = h("select", { id: "invoke-method" }, ["POST", "GET", "PUT", "PATCH", "DELETE"].map((m) => h("option", { value: m }, m)));
  const path = h("input", { id: "invoke-path", value: "/", autocomplete: "off" });
  const query = h("input", { id: "invoke-query", placeholder: "a=1&b=2", autocomplete: "off" });
  const headers = h("textarea", { id: "invoke-headers", placeholder: "Content-Type: text/plain" });
  const body = h("textarea", { id: "invoke-body-input" });
  const file = h("input", { type: "file", id: "invoke-file" });
  const asyncBox = h("input", { type: "checkbox", id: "invoke-async" });
  const callback = h("input", { id: "invoke-callback", type: "url", placeholder: "http://receiver/hook (optional)" });
  const invokeForm = h("form", { id: "invoke", class: "grid", onsubmit: (e) => { e.preventDefault(); invoke(); } },
    field("Method", method), field("Path", path), field("Query", query),
    field("Headers (Name: value per line)", headers), field("Body (text)", body), field("…or a file as the body", file),
    h("div", {}, field("Asynchronous", asyncBox, { class: "inline" }), field("Callback URL", callback)),
    h("div", {}, h("button", { type: "submit", class: "primary", id: "invoke-submit" }, "Invoke")));

  const logView = h("pre", { id: "function-log", "aria-live": "off" });
  show(main,
    h("h1", {}, `Function ${name}`),
    details,
    h("h2", {}, "Scale or delete"), scaleForm, scaleError,
    h("h2", {}, "Invoke"), invokeForm, result,
    h("h2", {}, "Recent asynchronous calls"), calls,
    h("h2", {}, "Log (live)"), logView);

  async function load() {
    try {
      const { data: f } = await getJson(`/system/function/${encodeURIComponent(name)}${qs({ namespace })}`);
      const env = Object.entries(f.envVars || {}).map(([k, v]) => `${k}=${v}`).join("\n");
      const labels = Object.entries({ ...(f.labels || {}), ...(f.annotations || {}) }).map(([k, v]) => `${k}=${v}`).join("\n");
      show(details, h("dl", {},
        h("dt", {}, "Namespace"), h("dd", {}, f.namespace),
        h("dt", {}, "Image"), h("dd", {}, f.image || "—"),
        h("dt", {}, "Process"), h("dd", {}, f.envProcess || "—"),
        h("dt", {}, "Replicas (ready/desired)"), h("dd", { id: "detail-replicas" }, `${f.availableReplicas ?? 0}/${f.replicas ?? 0}`),
        h("dt", {}, "Invocations"), h("dd", {}, String(f.invocationCount ?? 0)),
        h("dt", {}, "Environment"), h("dd", {}, h("pre", {}, env || "—")),
        h("dt", {}, "Labels and annotations"), h("dd", {}, h("pre", {}, labels || "—")),
        h("dt", {}, "Created"), h("dd", {}, f.createdAt || "—")));
      if (document.activeElement !== replicas && replicas.value === "") replicas.value = f.replicas ?? 0;
    } catch (e) {
      show(details, h("p", { class: "error", role: "alert" }, e.message));
    }
    try {
      const { data } = await getJson(`/system/async/calls${qs({ function: target, limit: 10 })}`);
      show(calls, data.calls.length === 0 ? h("p", { class: "muted" }, "None within the retention period.") :
        table(["Call", "State", "Attempts", "Status", "Enqueued"], data.calls.map(callRow)));
    } catch (e) {
      show(calls, h("p", { class: "error" }, e.message));
    }
  }

  async function scale() {
    show(scaleError);
    try {
      await change("POST", `/system/scale-function/${encodeURIComponent(name)}${qs({ namespace })}`,
        { serviceName: name, namespace, replicas: Number(replicas.value) });
      show(scaleError, h("span", { class: "ok" }, `Scaled to ${replicas.value}.`));
      load();
    } catch (e) { show(scaleError, e.message); }
  }

  async function remove() {
    if (!confirm(`Delete function ${name} in ${namespace}? Its replicas stop.`)) return;
    try {
      await change("DELETE", "/system/functions", { functionName: name, namespace });
      location.hash = "#/";
    } catch (e) { show(scaleError, e.message); }
  }

  async function invoke() {
    show(result, h("p", { class: "muted" }, "Calling…"));
    try {
      const hdrs = headerLines(headers.value);
      const isAsync = asyncBox.checked;
      if (isAsync && callback.value.trim()) hdrs["X-Callback-Url"] = callback.value.trim();
      const p = path.value.startsWith("/") ? path.value : `/${path.value}`;
      const base = isAsync ? "/async-function/" : "/function/";
      const target_path = `${base}${target}${p === "/" ? "" : p}${query.value ? `?${query.value.replace(/^\?/, "")}` : ""}`;
      const sendBody = ["GET", "HEAD"].includes(method.value) ? undefined : (file.files[0] || body.value);
      const r = await request(method.value, target_path, { body: sendBody, headers: hdrs, raw: true });
      const callId = r.headers.get("x-call-id");
      show(result,
        h("p", {}, "Status ", h("b", { id: "invoke-status" }, String(r.status)), ` in ${r.ms.toFixed(1)} ms`,
          callId ? [" — call ", h("a", { id: "invoke-call", href: `#/call/${encodeURIComponent(callId)}` }, callId)] : null),
        table(["Header", "Value"], [...r.headers.entries()].map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, v))), { id: "invoke-headers-out" }),
        bodyView(r));
      if (isAsync) load();
    } catch (e) {
      show(result, h("p", { class: "error", role: "alert" }, e.message));
    }
  }

  // The live log: /system/logs follows as NDJSON.
  async function follow() {
    try {
      const resp = await fetch(url(`/system/logs${qs({ name, namespace, follow: "true", tail: 100 })}`), { signal, credentials: "same-origin" });
      if (!resp.ok) { logView.textContent = (await resp.text()).trim(); return; }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let i;
        while ((i = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, i);
          buffered = buffered.slice(i + 1);
          if (!line.trim()) continue;
          let text = line;
          try { const m = JSON.parse(line); text = `${m.timestamp || ""} ${m.instance || ""} ${m.text ?? ""}`; } catch { /* raw */ }
          logView.append(document.createTextNode(`${text}\n`));
          while (logView.childNodes.length > 500) logView.firstChild.remove();
          logView.scrollTop = logView.scrollHeight;
        }
      }
    } catch (e) {
      if (!signal.aborted) logView.append(document.createTextNode(`(log ended: ${e.message})\n`));
    }
  }

  await load();
  follow();
  const timer = setInterval(load, 3000);
  signal.addEventListener("abort", () => clearInterval(timer));
}
