// Calls to the gateway's API with the key this tab holds (sessionStorage), as a Bearer header.
// A 401 asks for a key (the dialog) and retries once it is given.

const KEY = "roundhouse.apiKey";
let asking = null; // the promise of the key dialog, while it is open

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/** The error envelope's message (or the status line) of a failed answer. */
export async function errorText(res) {
  try {
    const body = await res.json();
    if (body && body.error) return `${res.status} ${body.error.code}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `${res.status} ${res.statusText}`;
}

function askForKey(wrong) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-error").textContent = wrong ? "That key was refused." : "";
  asking = new Promise((resolve) => {
    form.addEventListener("submit", () => {
      sessionStorage.setItem(KEY, input.value.trim());
      asking = null;
      resolve();
    }, { once: true });
  });
  dialog.showModal();
  input.focus();
  return asking;
}

/** fetch() against the gateway with the key; a 401 asks for a key and tries again. */
export async function api(path, options = {}) {
  for (;;) {
    const res = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
    if (res.status !== 401) return res;
    await askForKey(Boolean(apiKey()));
  }
}

/** The JSON of a successful answer; throws an Error with the envelope's message otherwise. */
export async function apiJson(path, options = {}) {
  const res = await api(path, options);
  if (!res.ok) throw new Error(await errorText(res));
  return res.json();
}
