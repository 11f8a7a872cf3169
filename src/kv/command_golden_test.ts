/**
 * The golden byte fixture of the command encoding (log entries carry commands, so the WAL and
 * peers hold them; see src/storage/README.md, "Golden fixtures"): `commands.bin` holds one
 * command of every op code, each as a u32 big-endian length and its bytes. The committed file must
 * still decode to the commands written out here, and encoding them today must give its bytes
 * exactly. After a deliberate format change (a new op code or transaction op kind: append the new
 * command, so the earlier bytes stay as they were), rewrite it with
 * `REWRITE=1 scripts/deno test --allow-all src/kv/command_golden_test.ts`.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { assertGoldenBytes, fromHex, hexBytes } from "../../testing/golden_bytes.ts";
import { decodeCommand, encodeCommand, type KvCommand } from "./state_machine.ts";

const FIXTURE = fileURLToPath(new URL("../storage/testdata/commands.bin", import.meta.url));

/**
 * One command of every op code (1 to 10), then a transaction with a put that names a lease, in
 * the order written.
 */
const COMMANDS: KvCommand[] = [
  { op: "put", key: "alpha", value: "1" },
  { op: "delete", key: "ключ" },
  { op: "put", key: "lock", value: "me", cas: 0 },
  { op: "delete", key: "lock", cas: 2 ** 40 + 3 },
  { op: "delete_range", range: { prefix: "p/" } },
  {
    op: "txn",
    compare: [
      { key: "a", target: "value", op: "=", value: "x" },
      { key: "a", target: "mod_index", op: "<", value: 9 },
      { key: "b", target: "exists", op: "!=", value: true },
    ],
    success: [{ op: "put", key: "a", value: "y" }, { op: "delete", key: "b" }],
    failure: [{ op: "get", key: "a" }],
  },
  {
    op: "idempotent",
    id: "req-1",
    at: 1_700_000_000_123,
    ttlMs: 3_600_000,
    maxKeys: 100_000,
    maxBytes: 64 << 20,
    command: { op: "put", key: "k", value: "v", cas: 5 },
  },
  { op: "lease_grant", ttlMs: 10_000 },
  { op: "put", key: "svc/a", value: "up", lease: { id: 2 ** 33 + 8 } },
  { op: "put", key: "lock", value: "me", cas: 0, lease: { ttlMs: 5_000 } },
  { op: "lease_revoke", ids: [8, 2 ** 33 + 8], reason: "expire" },
  { op: "lease_revoke", ids: [], reason: "revoke" },
  // Transaction op kind 3 (a put with a lease) came later, appended here: the bytes before it in
  // the file are those of the earlier fixture, unchanged.
  {
    op: "txn",
    compare: [{ key: "svc/a", target: "version", op: ">", value: 0 }],
    success: [
      { op: "put", key: "svc/a", value: "up", lease: 2 ** 33 + 8 },
      { op: "get", key: "svc/a" },
    ],
    failure: [{ op: "put", key: "svc/b", value: "down" }],
  },
];

/** The first two commands, byte by byte: length, op 1, key length, "alpha", "1"; then op 2. */
const START = `
  00 00 00 0b  01  00 00 00 05  61 6c 70 68 61  31
  00 00 00 0d  02  00 00 00 08  d0 ba d0 bb d1 8e d1 87`;

function encodeAll(commands: KvCommand[]): Uint8Array {
  const parts = commands.map(encodeCommand);
  const out = new Uint8Array(parts.reduce((n, p) => n + 4 + p.length, 0));
  const view = new DataView(out.buffer);
  let at = 0;
  for (const p of parts) {
    view.setUint32(at, p.length);
    out.set(p, at + 4);
    at += 4 + p.length;
  }
  return out;
}

Deno.test("the committed commands decode to the commands they were written from", async () => {
  const bytes = await Deno.readFile(FIXTURE);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const decoded: KvCommand[] = [];
  for (let at = 0; at < bytes.length;) {
    const n = view.getUint32(at);
    decoded.push(decodeCommand(bytes.subarray(at + 4, at + 4 + n)));
    at += 4 + n;
  }
  assert.deepEqual(decoded, COMMANDS);
  const start = fromHex(START);
  assert.equal(hexBytes(bytes, 0, start.length), hexBytes(start));
});

Deno.test("encodeCommand() produces the committed commands byte for byte", async () => {
  await assertGoldenBytes(FIXTURE, encodeAll(COMMANDS));
});
