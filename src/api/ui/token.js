// The bearer token of the dashboard's pages (the dashboard, app.js, and the watch page, watch.js):
// where it is kept, how it goes with a request, and the form that asks for one when a node answers
// 401 or 403. Plain browser JS served as it is (see src/api/ui.ts); the token is only ever sent
// in an Authorization header, never in a URL.

/** Where the bearer token is kept (per tab, cleared when the tab closes). */
export const TOKEN_KEY = "raftkv.token";

/**
 * The tab's token: in session storage, or in memory for this page where storage is refused (a
 * private mode).
 *
 * @param {Pick<Storage, "getItem" | "setItem" | "removeItem"> | null} storage Where to keep it
 * (the page's `sessionStorage`; null to keep it in memory only).
 * @returns {{ get(): string | null, set(value: string | null): void }}
 */
export function tokenStore(storage) {
  /** @type {string | null} */
  let memory = null;
  return {
    get() {
      try {
        return storage === null ? memory : storage.getItem(TOKEN_KEY);
      } catch {
        return memory;
      }
    },
    set(value) {
      memory = value;
      try {
        if (storage === null) return;
        if (value === null) storage.removeItem(TOKEN_KEY);
        else storage.setItem(TOKEN_KEY, value);
      } catch {
        // Storage refused: the token lives in memory for this page.
      }
    },
  };
}

/**
 * `headers` with `Authorization: Bearer <token>` added when there is a token.
 *
 * @param {Record<string, string>} headers The request's other headers.
 * @param {string | null} token The token, or null for none.
 * @returns {Record<string, string>}
 */
export function withToken(headers, token) {
  return token ? { ...headers, authorization: `Bearer ${token}` } : { ...headers };
}

/**
 * What to tell the user when a node refused a request for its token (401 or 403), or null for
 * any other status. A refused token (401 with one) is forgotten, so that the next request goes
 * without it.
 *
 * @param {number} status The answer's status.
 * @param {{ get(): string | null, set(value: string | null): void }} store The tab's token.
 * @param {string} what What the request wanted, for a 403 ("read the cluster's state").
 * @param {string} why The node's own error message (` : ...`), or "".
 * @returns {string | null}
 */
export function refusalMessage(status, store, what, why = "") {
  if (status === 401) {
    const had = store.get();
    if (had) store.set(null);
    return had
      ? "The token was refused (401). Enter another one."
      : "This node asks for a bearer token (401).";
  }
  if (status === 403) return `This token may not ${what} (403)${why}.`;
  return null;
}

/**
 * Fills the page's empty token form (`<form id="auth" hidden>`, the same on every page) with its
 * message (`#auth-message`), its field (`#token`) and its button, and wires it: `ask` shows it
 * with a message; a token typed in is kept in `store`, the form hides, and `onToken` runs (to
 * retry what was refused).
 *
 * @param {{ get(): string | null, set(value: string | null): void }} store The tab's token.
 * @param {() => void} onToken Called after a token was entered.
 * @returns {{ ask(message: string): void, readonly waiting: boolean }}
 */
export function tokenForm(store, onToken) {
  const form = /** @type {HTMLFormElement} */ (document.getElementById("auth"));
  const make = (
    /** @type {string} */ tag,
    /** @type {Record<string, string>} */ attributes = {},
  ) => {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
    return element;
  };
  const message = make("p", { id: "auth-message" });
  const label = make("label", { for: "token" });
  label.textContent = "Bearer token";
  const input = /** @type {HTMLInputElement} */ (make("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: "",
  }));
  const button = make("button", { type: "submit" });
  button.textContent = "Use token";
  const row = make("span", { class: "auth-row" });
  row.append(input, button);
  const note = make("p", { class: "muted" });
  const header = make("code");
  header.textContent = "Authorization: Bearer …";
  note.append("Kept in this tab only (session storage), sent as ", header, ".");
  form.replaceChildren(message, label, row, note);
  let waiting = false;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (value === "") return;
    store.set(value);
    input.value = "";
    form.hidden = true;
    waiting = false;
    onToken();
  });
  return {
    ask(text) {
      waiting = true;
      message.textContent = text;
      form.hidden = false;
      input.focus();
    },
    get waiting() {
      return waiting;
    },
  };
}

/**
 * The page's `sessionStorage`, or null where reading it throws (storage disabled).
 *
 * @returns {Storage | null}
 */
export function sessionStorageOrNull() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null;
  }
}
