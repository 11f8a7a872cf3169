import assert from "node:assert/strict";
import {
  httpRequestBytes,
  HttpResponseReader,
  LineSplitter,
  parseEtcdWatchLine,
} from "./bench_watch_lib.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (parts: Uint8Array[]) => parts.map((p) => new TextDecoder().decode(p)).join("");

/** Feeds `text` to a fresh reader in pieces of `size` bytes; returns the body and the reader. */
function feed(text: string, size: number): { body: string; reader: HttpResponseReader } {
  const reader = new HttpResponseReader();
  const bytes = enc(text);
  const parts: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) {
    parts.push(...reader.push(bytes.slice(i, i + size)));
  }
  return { body: dec(parts), reader };
}

// etcd 3.4's gateway answer to POST /v3/watch, as it arrives on the wire (chunked, one JSON
// object per chunk, each ending in a newline).
const created =
  `{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"1","raft_term":"2"},"created":true}}\n`;
const event =
  `{"result":{"header":{"revision":"2"},"events":[{"kv":{"key":"YS8x","create_revision":"2","mod_revision":"2","version":"1","value":"eA=="}},{"kv":{"key":"YS8y","value":"MTI="}}]}}\n`;
const chunk = (s: string) => `${enc(s).length.toString(16)}\r\n${s}\r\n`;
const etcdWire = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" +
  "Grpc-Metadata-Content-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n" +
  chunk(created) + chunk(event);

Deno.test("HttpResponseReader: a chunked stream, whatever the pieces it arrives in", () => {
  for (const size of [1, 2, 3, 7, 64, 100_000]) {
    const { body, reader } = feed(etcdWire, size);
    assert.equal(body, created + event, `pieces of ${size}`);
    assert.equal(reader.head?.status, 200);
    assert.equal(reader.head?.headers.get("content-type"), "application/json");
    assert.equal(reader.done, false, "the stream goes on");
  }
  const { reader } = feed(etcdWire + "0\r\nx-trailer: 1\r\n\r\n", 5);
  assert.equal(reader.done, true, "the last chunk and its trailer end it");
});

Deno.test("HttpResponseReader: chunk extensions, sized and until-close bodies", () => {
  assert.equal(
    feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\n\r\n", 4)
      .body,
    "abc",
  );
  const sized = feed("HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhelloEXTRA", 3);
  assert.equal(sized.body, "hello");
  assert.equal(sized.reader.head?.status, 404);
  assert.equal(sized.reader.done, true);
  const close = feed("HTTP/1.0 200 OK\r\n\r\ndata: 1\n\n", 2);
  assert.equal(close.body, "data: 1\n\n");
  assert.equal(close.reader.done, false);
});

Deno.test("HttpResponseReader: malformed heads and chunks throw", () => {
  assert.throws(() => new HttpResponseReader().push(enc("HTTP/2 200\r\n\r\n")), /status line/);
  assert.throws(
    () => new HttpResponseReader().push(enc("HTTP/1.1 200 OK\r\nno colon\r\n\r\n")),
    /header line/,
  );
  assert.throws(
    () =>
      new HttpResponseReader().push(
        enc("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
      ),
    /chunk size/,
  );
  assert.throws(
    () =>
      new HttpResponseReader().push(
        enc("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabX"),
      ),
    /CRLF/,
  );
});

Deno.test("LineSplitter: lines across pieces, CRLF, multi-byte characters split", () => {
  const s = new LineSplitter();
  const bytes = enc("ab\r\nc\u00e9");
  assert.deepEqual(s.push(bytes.slice(0, 3)), []);
  assert.deepEqual(s.push(bytes.slice(3, 6)), ["ab"]);
  assert.deepEqual(s.push(bytes.slice(6)), []);
  assert.deepEqual(s.push(enc("\n\n")), ["c\u00e9", ""]);
});

Deno.test("parseEtcdWatchLine: created, events, cancel and error messages", () => {
  assert.deepEqual(parseEtcdWatchLine(created.trim()), {
    created: true,
    failed: null,
    values: [],
  });
  assert.deepEqual(parseEtcdWatchLine(event.trim()), {
    created: false,
    failed: null,
    values: ["x", "12"],
  });
  assert.deepEqual(
    parseEtcdWatchLine(`{"result":{"canceled":true,"cancel_reason":"mvcc: required revision"}}`),
    { created: false, failed: "canceled: mvcc: required revision", values: [] },
  );
  assert.deepEqual(
    parseEtcdWatchLine(`{"error":{"grpc_code":14,"http_code":503,"message":"unavailable"}}`),
    { created: false, failed: "unavailable", values: [] },
  );
  assert.throws(() => parseEtcdWatchLine("{not json"));
});

Deno.test("httpRequestBytes: start line, host, fields, content-length and body", () => {
  const text = new TextDecoder().decode(
    httpRequestBytes("POST", "http://127.0.0.1:2379/v3/watch?x=1", { "content-type": "a/b" }, "é"),
  );
  assert.equal(
    text,
    "POST /v3/watch?x=1 HTTP/1.1\r\nhost: 127.0.0.1:2379\r\ncontent-type: a/b\r\n" +
      "content-length: 2\r\n\r\né",
  );
  assert.equal(
    new TextDecoder().decode(httpRequestBytes("GET", "http://h:1/v1/watch", {}, null)),
    "GET /v1/watch HTTP/1.1\r\nhost: h:1\r\n\r\n",
  );
});
