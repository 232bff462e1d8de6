// Triggers: each scheduled function with its schedule, last firing (and that call's state)
// and next firing, from /system/triggers, refreshed every few seconds while the page is open.
import { h, show, table } from "./dom.js";
import { getJson, qualified } from "./api.js";

const POLL_MS = 3000;

export async function triggersPage(main, signal) {
  const body = h("div", { id: "triggers", "aria-live": "polite" });
  show(main, h("h1", {}, "Triggers"), body);
  const draw = async () => {
    try {
      const { data } = await getJson("/system/triggers");
      if (signal.aborted) return;
      if (data.length === 0) {
        show(body, h("p", {}, "No function has a trigger. Annotate one with topic: cron-function and a schedule."));
        return;
      }
      const rows = data.map((t) => h("tr", {},
        h("td", {}, h("a", { href: `#/function/${encodeURIComponent(t.namespace)}/${encodeURIComponent(t.function)}` }, qualified(t.function, t.namespace))),
        h("td", {}, t.kind),
        h("td", {}, h("code", {}, t.schedule ?? "")),
        h("td", {}, t.lastFiring
          ? h("span", {}, h("a", { href: `#/call/${encodeURIComponent(t.lastFiring.callId)}` }, t.lastFiring.scheduledAt), " ", t.lastFiring.state ?? "")
          : "none yet"),
        h("td", {}, t.nextFiring ?? "")));
      show(body, table(["Function", "Kind", "Schedule", "Last firing", "Next firing"], rows, { id: "triggers-table" }));
    } catch (e) {
      if (!signal.aborted) show(body, h("p", { class: "error", role: "alert" }, e.message));
    }
  };
  await draw();
  const timer = setInterval(draw, POLL_MS);
  signal.addEventListener("abort", () => clearInterval(timer));
}
