// Building the page from data without ever parsing data as markup: every string becomes a
// text node or an attribute value.

/** h("tag", {attr: value, onclick: fn}, child...) — children are nodes, strings or arrays. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the content of `el`. */
export function show(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A labelled form control: the label wraps the control, so it is announced with it. */
export function field(text, control, attrs = {}) {
  return h("label", attrs, text, control);
}

/** A table with a header row and one row per item. */
export function table(headers, rows, attrs = {}) {
  return h("div", { class: "scroll" },
    h("table", attrs,
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col", class: t.optional ? "optional" : null }, t.text ?? t)))),
      h("tbody", {}, rows)));
}

/** An element that shows an error message, for forms. */
export function errorBox(id) {
  return h("p", { id, class: "error", role: "alert" });
}

/** "3 s", "4 min"... */
export function age(seconds) {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}
