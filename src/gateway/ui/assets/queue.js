// Queue health: figures from /system/async/stats, polled every few seconds for the whole
// session, with a sparkline of the depth over the last minutes (an SVG polyline, no library).
import { h, show, age } from "./dom.js";
import { getJson } from "./api.js";

const POLL_MS = 3000;
const KEEP = 100; // samples: five minutes at one every three seconds
const depths = [];
let latest = null;
let failure = null;
const listeners = new Set();

const SVG = "http://www.w3.org/2000/svg";

function sparkline(big) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", big ? "spark big" : "spark");
  svg.setAttribute("viewBox", `0 0 ${KEEP} 20`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const max = Math.max(1, ...depths);
  svg.setAttribute("aria-label", `Queue depth over the last ${Math.round(depths.length * POLL_MS / 60000)} minutes, at most ${max}`);
  const line = document.createElementNS(SVG, "polyline");
  const offset = KEEP - depths.length;
  line.setAttribute("points", depths.map((d, i) => `${offset + i},${(20 - (d / max) * 19).toFixed(2)}`).join(" "));
  svg.append(line);
  return svg;
}

async function poll() {
  try {
    const { data } = await getJson("/system/async/stats");
    latest = data;
    failure = null;
    depths.push(data.depth);
    if (depths.length > KEEP) depths.shift();
  } catch (e) {
    failure = e.message;
  }
  for (const fn of listeners) fn();
}

/** Starts polling and keeps the header's small panel current. */
export function startHealth(el) {
  const draw = () => {
    if (failure) show(el, h("span", { class: "error" }, `Queue: ${failure}`));
    else if (latest) show(el, h("a", { href: "#/queue" }, `Queue depth ${latest.depth}`), sparkline(false));
  };
  listeners.add(draw);
  poll();
  setInterval(poll, POLL_MS);
}

export async function queuePage(main, signal) {
  const body = h("div", { id: "queue-stats", "aria-live": "polite" });
  show(main, h("h1", {}, "Queue"), body);
  const stat = (label, value, id) => h("div", { class: "stat" }, h("b", { id }, value), label);
  const draw = () => {
    if (failure) { show(body, h("p", { class: "error", role: "alert" }, failure)); return; }
    if (!latest) return;
    show(body,
      h("div", { class: "stats" },
        stat("waiting", String(latest.depth), "stat-depth"),
        stat("oldest waiting", age(latest.oldestAge), "stat-oldest"),
        stat("running", String(latest.inFlight), "stat-inflight"),
        stat("waiting for a retry", latest.retrying === null ? "n/a" : String(latest.retrying), "stat-retrying"),
        stat("dead letters", String(latest.deadLetters), "stat-dead"),
        stat("retries (this gateway)", String(latest.retriesTotal), "stat-retries")),
      h("h2", {}, "Depth, last minutes"),
      sparkline(true));
  };
  listeners.add(draw);
  draw();
  signal.addEventListener("abort", () => listeners.delete(draw));
}
