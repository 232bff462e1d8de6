// The router: one page per location hash; leaving a page aborts its timers and streams.
import { h, show } from "./dom.js";
import { functionsPage } from "./functions.js";
import { functionPage } from "./function.js";
import { callsPage, callPage, deadLettersPage } from "./calls.js";
import { queuePage, startHealth } from "./queue.js";
import { triggersPage } from "./triggers.js";

const main = document.getElementById("main");
let leaving = null;

async function route() {
  if (leaving) leaving.abort();
  leaving = new AbortController();
  const signal = leaving.signal;
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query);
  try {
    if (parts.length === 0) await functionsPage(main, signal);
    else if (parts[0] === "function" && parts.length === 3) await functionPage(main, signal, parts[1], parts[2]);
    else if (parts[0] === "calls") await callsPage(main, signal, params);
    else if (parts[0] === "call" && parts.length === 2) await callPage(main, signal, parts[1]);
    else if (parts[0] === "dead-letters") await deadLettersPage(main, signal);
    else if (parts[0] === "queue") await queuePage(main, signal);
    else if (parts[0] === "triggers") await triggersPage(main, signal);
    else show(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Functions")));
  } catch (e) {
    show(main, h("p", { class: "error", role: "alert" }, e.message));
  }
}

window.addEventListener("hashchange", route);
startHealth(document.getElementById("health"));
route();
