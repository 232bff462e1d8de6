// The functions page: the list (with a namespace selector, refreshed every few seconds) and
// the deploy form.
import { h, show, field, table, errorBox } from "./dom.js";
import { getJson, change, qs, DEFAULT_NAMESPACE } from "./api.js";

let namespace = DEFAULT_NAMESPACE;

function pairs(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (!t) continue;
    const i = t.indexOf("=");
    if (i <= 0) throw new Error(`"${t}" is not KEY=VALUE`);
    out[t.slice(0, i).trim()] = t.slice(i + 1);
  }
  return out;
}

function row(f) {
  const ready = (f.availableReplicas ?? 0) > 0;
  const status = ready ? "Ready" : (f.replicas ?? 0) === 0 ? "Scaled to zero" : "Not ready";
  return h("tr", { "data-name": f.name },
    h("td", {}, h("a", { href: `#/function/${encodeURIComponent(f.namespace)}/${encodeURIComponent(f.name)}`, class: "fn-link" }, f.name)),
    h("td", { class: "optional" }, f.namespace),
    h("td", { class: "optional" }, f.image || f.envProcess || ""),
    h("td", { class: "replicas" }, `${f.availableReplicas ?? 0}/${f.replicas ?? 0}`),
    h("td", { class: "invocations" }, String(f.invocationCount ?? 0)),
    h("td", {}, h("span", { class: `badge ${ready ? "ready" : "not-ready"}`, "data-status": status }, status)));
}

export async function functionsPage(main, signal) {
  const list = h("div", { id: "function-list", "aria-live": "polite" });
  const nsSelect = h("select", { id: "namespace", onchange: () => { namespace = nsSelect.value; refresh(); } });
  const error = errorBox("deploy-error");
  const form = h("form", { id: "deploy", class: "grid", onsubmit: (e) => { e.preventDefault(); deploy(); } },
    field("Name", h("input", { name: "service", id: "deploy-name", required: true, autocomplete: "off" })),
    field("Image", h("input", { name: "image", id: "deploy-image", placeholder: "ghcr.io/me/fn:1" })),
    field("Process (fprocess)", h("input", { name: "envProcess", id: "deploy-process", placeholder: "cat" })),
    field("Namespace", h("input", { name: "namespace", id: "deploy-namespace", value: DEFAULT_NAMESPACE })),
    field("Environment (KEY=VALUE per line)", h("textarea", { name: "env", id: "deploy-env" })),
    field("Labels (KEY=VALUE per line)", h("textarea", { name: "labels", id: "deploy-labels" })),
    field("Annotations (KEY=VALUE per line)", h("textarea", { name: "annotations", id: "deploy-annotations" })),
    h("div", {}, h("button", { type: "submit", class: "primary", id: "deploy-submit" }, "Deploy")));
  show(main,
    h("h1", {}, "Functions"),
    h("div", { class: "row" }, field("Namespace", nsSelect, { class: "inline" })),
    list,
    h("h2", {}, "Deploy a function"),
    form, error);

  async function deploy() {
    const data = new FormData(form);
    show(error);
    try {
      const spec = {
        service: data.get("service").trim(),
        image: data.get("image").trim(),
        namespace: data.get("namespace").trim() || undefined,
        envVars: pairs(data.get("env")),
        labels: pairs(data.get("labels")),
        annotations: pairs(data.get("annotations")),
      };
      const process = data.get("envProcess").trim();
      if (process) spec.envProcess = process;
      await change("POST", "/system/functions", spec);
      show(error, h("span", { class: "ok" }, `Deployed ${spec.service}.`));
      form.reset();
      refresh();
    } catch (e) {
      show(error, e.message);
    }
  }

  async function namespaces() {
    try {
      const { data } = await getJson("/system/namespaces");
      const names = data.includes(namespace) ? data : [namespace, ...data];
      show(nsSelect, names.map((n) => h("option", { value: n, selected: n === namespace }, n)));
    } catch (e) { /* the list shows the error */ }
  }

  async function refresh() {
    try {
      const { data } = await getJson(`/system/functions${qs({ namespace })}`);
      data.sort((a, b) => a.name.localeCompare(b.name));
      show(list, data.length === 0 ? h("p", { class: "muted" }, "No functions in this namespace.") :
        table(["Name", { text: "Namespace", optional: true }, { text: "Image or process", optional: true }, "Replicas (ready/desired)", "Invocations", "Status"],
          data.map(row), { id: "functions-table" }));
    } catch (e) {
      show(list, h("p", { class: "error", role: "alert" }, e.message));
    }
  }

  await namespaces();
  await refresh();
  const timer = setInterval(refresh, 3000);
  signal.addEventListener("abort", () => clearInterval(timer));
}
