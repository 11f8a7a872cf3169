// The pages' token handling, run in Deno on the very file the browser loads.
import assert from "node:assert/strict";
import { refusalMessage, TOKEN_KEY, tokenStore, withToken } from "./token.js";

function fakeStorage(): Storage & { items: Map<string, string> } {
  const items = new Map<string, string>();
  return {
    items,
    getItem: (k: string) => items.get(k) ?? null,
    setItem: (k: string, v: string) => void items.set(k, v),
    removeItem: (k: string) => void items.delete(k),
  } as unknown as Storage & { items: Map<string, string> };
}

Deno.test("the token is kept in the tab's storage under one key, or in memory without one", () => {
  const storage = fakeStorage();
  const store = tokenStore(storage);
  assert.equal(store.get(), null);
  store.set("abc");
  assert.equal(storage.items.get(TOKEN_KEY), "abc");
  assert.equal(tokenStore(storage).get(), "abc", "another page of the tab finds it");
  store.set(null);
  assert.equal(storage.items.size, 0);
  const memory = tokenStore(null);
  memory.set("m");
  assert.equal(memory.get(), "m");
});

Deno.test("a storage that throws leaves the token in memory", () => {
  const refusing = {
    getItem() {
      throw new Error("denied");
    },
    setItem() {
      throw new Error("denied");
    },
    removeItem() {
      throw new Error("denied");
    },
  };
  const store = tokenStore(refusing);
  store.set("t");
  assert.equal(store.get(), "t");
});

Deno.test("the token goes as a bearer Authorization header, and nothing without one", () => {
  assert.deepEqual(withToken({ accept: "x" }, "t0k"), { accept: "x", authorization: "Bearer t0k" });
  assert.deepEqual(withToken({ accept: "x" }, null), { accept: "x" });
  assert.deepEqual(withToken({}, ""), {});
});

Deno.test("401 asks for a token and forgets a refused one; 403 says what was not allowed", () => {
  const store = tokenStore(fakeStorage());
  assert.equal(refusalMessage(401, store, "x"), "This node asks for a bearer token (401).");
  store.set("bad");
  assert.equal(refusalMessage(401, store, "x"), "The token was refused (401). Enter another one.");
  assert.equal(store.get(), null);
  store.set("reader");
  assert.equal(
    refusalMessage(403, store, "watch these keys", ": needs read"),
    "This token may not watch these keys (403): needs read.",
  );
  assert.equal(store.get(), "reader", "a 403 token is not forgotten");
  assert.equal(refusalMessage(500, store, "x"), null);
});
