// Calls to the gateway. URLs are built on location.origin, which never carries credentials
// (a page opened as http://user:pass@host/ui/ would otherwise make fetch refuse relative URLs).

export const DEFAULT_NAMESPACE = "openfaas-fn";

export function url(path) {
  return new URL(path, location.origin).toString();
}

/** Sends a request; resolves to {status, ok, headers, text, bytes, ms} (never rejects on HTTP errors). */
export async function request(method, path, { body, headers = {}, raw = false } = {}) {
  const init = { method, headers: { ...headers }, credentials: "same-origin" };
  if (body !== undefined) {
    if (typeof body === "string" || body instanceof Blob || body instanceof ArrayBuffer) init.body = body;
    else { init.body = JSON.stringify(body); init.headers["content-type"] = "application/json"; }
  }
  const started = performance.now();
  const resp = await fetch(url(path), init);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const ms = performance.now() - started;
  const text = raw ? "" : new TextDecoder().decode(bytes);
  return { status: resp.status, ok: resp.ok, headers: resp.headers, text, bytes, ms };
}

/** GETs JSON; throws an Error carrying the API's message. */
export async function getJson(path) {
  const r = await request("GET", path);
  if (!r.ok) throw new Error(r.text.trim() || `HTTP ${r.status}`);
  return { data: JSON.parse(r.text), headers: r.headers };
}

/** Sends a change; throws an Error carrying the API's message. */
export async function change(method, path, body) {
  const r = await request(method, path, { body });
  if (!r.ok) throw new Error(r.text.trim() || `HTTP ${r.status}`);
  return r;
}

/** How the gateway names a function in paths: NAME, or NAME.NAMESPACE outside the default. */
export function qualified(name, namespace) {
  return !namespace || namespace === DEFAULT_NAMESPACE ? name : `${name}.${namespace}`;
}

export function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}
