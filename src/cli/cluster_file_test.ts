import assert from "node:assert/strict";
import { parseClusterFile, urlPort } from "./cluster_file.ts";
import { ConfigError } from "./errors.ts";

function _node(id: string, rpc: string, api: string) {
  return { node_id: id, rpc_url: rpc, api_url: api };
}

const _THREE = [
  _node("node-1", "http://localhost:6666", "http://localhost:7777"),
  _node("node-2", "http://localhost:6667", "http://localhost:7778"),
  _node("node-3", "http://localhost:6668", "http://localhost:7779"),
];

function _assertRejects(data: unknown, ...fragments: string[]): void {
  const text = typeof data === "string" ? data : JSON.stringify(data);
  let caught: unknown;
  try {
    parseClusterFile(text, "peers.json");
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${caught}`);
  assert.match(caught.message, /^Invalid cluster file "peers\.json": /);
  for (const fragment of fragments) {
    assert.ok(
      caught.message.includes(fragment),
      `message ${JSON.stringify(caught.message)} lacks ${JSON.stringify(fragment)}`,
    );
  }
}

Deno.test("parseClusterFile() returns the members in file order", () => {
  assert.deepEqual(parseClusterFile(JSON.stringify(_THREE), "peers.json"), [
    { id: "node-1", rpcUrl: "http://localhost:6666", apiUrl: "http://localhost:7777" },
    { id: "node-2", rpcUrl: "http://localhost:6667", apiUrl: "http://localhost:7778" },
    { id: "node-3", rpcUrl: "http://localhost:6668", apiUrl: "http://localhost:7779" },
  ]);
});

Deno.test("parseClusterFile() normalises URLs to their origin", () => {
  const peers = parseClusterFile(
    JSON.stringify([_node("a", "HTTP://Example.COM:6666/", "https://example.com:443")]),
    "peers.json",
  );
  assert.deepEqual(peers, [
    { id: "a", rpcUrl: "http://example.com:6666", apiUrl: "https://example.com" },
  ]);
});

Deno.test("parseClusterFile() rejects text that is not JSON", () => {
  _assertRejects("[{", "not valid JSON");
});

Deno.test("parseClusterFile() rejects a top level that is not an array", () => {
  _assertRejects({ nodes: _THREE }, "expected a JSON array", "got an object");
  _assertRejects("null", "got null");
});

Deno.test("parseClusterFile() rejects an empty array", () => {
  _assertRejects([], "lists no nodes");
});

Deno.test("parseClusterFile() rejects entries that are not objects", () => {
  _assertRejects([..._THREE, "node-4"], "entry 4", 'got string "node-4"');
});

Deno.test("parseClusterFile() rejects missing, mistyped and unknown fields", () => {
  _assertRejects([{ node_id: "a", rpc_url: "http://h:1" }], "entry 1", 'missing field "api_url"');
  _assertRejects(
    [_node("a", "http://h:1", "http://h:2"), { ..._THREE[1], node_id: 2 }],
    [
      "entry 2",
      '"node_id" must be a string, got number 2',
    ].join(": "),
  );
  _assertRejects([{ ..._THREE[0], rpcUrl: "x" }], 'unknown field "rpcUrl"');
});

Deno.test("parseClusterFile() rejects ids that could not be directory names", () => {
  for (const id of ["", "../etc", "a b", "-a", "a/b"]) {
    _assertRejects([_node(id, "http://h:1", "http://h:2")], "entry 1", JSON.stringify(id));
  }
});

Deno.test("parseClusterFile() rejects duplicate node ids, naming both entries", () => {
  _assertRejects(
    [..._THREE, _node("node-2", "http://localhost:6669", "http://localhost:7780")],
    'entry 4 (node_id "node-2")',
    "duplicate node_id, already used by entry 2",
  );
});

Deno.test("parseClusterFile() rejects a host and port used twice", () => {
  _assertRejects(
    [..._THREE, _node("node-4", "http://localhost:6667", "http://localhost:7780")],
    'entry 4 (node_id "node-4") rpc_url "http://localhost:6667"',
    "localhost:6667 are already used by entry 2 rpc_url",
  );
});

Deno.test("parseClusterFile() rejects an rpc_url equal to an api_url", () => {
  _assertRejects(
    [_node("a", "http://localhost:6666", "http://localhost:6666")],
    'entry 1 (node_id "a") api_url',
    "already used by entry 1 rpc_url",
  );
  _assertRejects(
    [
      _node("a", "http://localhost:6666", "http://localhost:7777"),
      _node("b", "http://localhost:7777", "http://localhost:8888"),
    ],
    'entry 2 (node_id "b") rpc_url',
    "already used by entry 1 api_url",
  );
});

Deno.test("parseClusterFile() reads a bare host:port (the original project's form) as http", () => {
  const peers = parseClusterFile(
    JSON.stringify([
      { node_id: "node-1", rpc_url: "localhost:6666", api_url: "localhost:7777" },
      { node_id: "node-2", rpc_url: "10.0.0.2:6666", api_url: "[::1]:7778" },
    ]),
    "config.json",
  );
  assert.deepEqual(peers, [
    { id: "node-1", rpcUrl: "http://localhost:6666", apiUrl: "http://localhost:7777" },
    { id: "node-2", rpcUrl: "http://10.0.0.2:6666", apiUrl: "http://[::1]:7778" },
  ]);
});

Deno.test("parseClusterFile() counts a default port as that port", () => {
  _assertRejects(
    [_node("a", "http://host", "http://host:80")],
    "host:80 are already used",
  );
});

Deno.test("parseClusterFile() rejects unparsable URLs", () => {
  _assertRejects(
    [_node("a", "localhost:", "http://localhost:7777")],
    'rpc_url "localhost:"',
  );
  _assertRejects(
    [_node("a", "localhost:6666/x", "http://localhost:7777")],
    'rpc_url "localhost:6666/x"',
  );
  _assertRejects(
    [_node("a", "http://localhost:6666", "not a url")],
    'api_url "not a url" is not a valid URL',
  );
  _assertRejects(
    [_node("a", "http://localhost:99999", "http://localhost:7777")],
    "is not a valid URL",
  );
});

Deno.test("parseClusterFile() rejects schemes other than http and https", () => {
  _assertRejects(
    [_node("a", "ftp://localhost:6666", "http://localhost:7777")],
    'rpc_url "ftp://localhost:6666" has scheme "ftp"',
    'only "http" and "https"',
  );
  _assertRejects(
    [_node("a", "mailto:ops@example.com", "http://localhost:7777")],
    'has scheme "mailto"',
  );
});

Deno.test("parseClusterFile() rejects URLs with a path, query, fragment or credentials", () => {
  for (const url of ["http://h:1/raft", "http://h:1/?x=1", "http://h:1/#top"]) {
    _assertRejects([_node("a", url, "http://h:2")], JSON.stringify(url), "without a path");
  }
  _assertRejects([_node("a", "http://u:p@h:1", "http://h:2")], "credentials");
});

Deno.test("urlPort() returns the explicit port or the scheme's default", () => {
  assert.equal(urlPort("http://localhost:6666"), 6666);
  assert.equal(urlPort("http://localhost"), 80);
  assert.equal(urlPort("https://localhost"), 443);
});

Deno.test("parseClusterFile() accepts https rpc_urls but refuses a mix of http and https", () => {
  const https = _THREE.map((n) => ({ ...n, rpc_url: n.rpc_url.replace("http:", "https:") }));
  assert.deepEqual(
    parseClusterFile(JSON.stringify(https), "peers.json").map((p) => p.rpcUrl),
    ["https://localhost:6666", "https://localhost:6667", "https://localhost:6668"],
  );
  _assertRejects(
    [https[0], _THREE[1], https[2]],
    'the rpc_urls mix https (entry 1, node_id "node-1") and http (entry 2, node_id "node-2")',
    "peers either all use TLS (https) or none does (http)",
  );
});
