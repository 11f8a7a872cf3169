// The changes of a key or a prefix as they are committed, live: the browser's EventSource on
// GET /v1/watch of the node that served the page. `?key=K` or `?prefix=P` (default: every key),
// and `?from=N`, as the API takes them. EventSource reconnects by itself after a broken stream,
// sending Last-Event-ID, so the list goes on without a gap or a repeat. A page to build on: the
// dashboard can reuse the stream the same way.

const params = new URLSearchParams(location.search);
const query = new URLSearchParams();
for (const name of ["key", "prefix", "from"]) {
  const value = params.get(name);
  if (value !== null) query.set(name, value);
}
if (!query.has("key") && !query.has("prefix")) query.set("prefix", "");

const state = document.getElementById("state");
const list = document.getElementById("events");
document.getElementById("what").textContent = query.has("key")
  ? `key ${query.get("key")}`
  : `keys under "${query.get("prefix")}"`;

function show(text, name) {
  state.textContent = text;
  state.dataset.state = name;
}

const source = new EventSource(`../v1/watch?${query}`);
source.addEventListener("open", () => show("watching", "open"));
source.addEventListener("message", (message) => {
  const e = JSON.parse(message.data);
  const item = document.createElement("li");
  item.dataset.index = String(e.index);
  item.dataset.type = e.type;
  item.textContent = `${e.index} ${e.type} ${e.k}${e.v === null ? "" : ` = ${e.v}`}`;
  list.append(item);
});
source.addEventListener("error", (event) => {
  // The server's own final event carries data; a broken connection does not.
  const reason = typeof event.data === "string" ? JSON.parse(event.data).error : null;
  show(reason ?? "reconnecting…", "error");
});
