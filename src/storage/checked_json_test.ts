import assert from "node:assert/strict";
import { decodeCheckedJson, encodeCheckedJson } from "./checked_json.ts";
import { CorruptFileError } from "./errors.ts";

const _SCHEMA = { term: "integer", vote: "string" } as const;
const _text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);
const _bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

Deno.test("encodeCheckedJson() writes one line of JSON with the fields in schema order", () => {
  const text = _text(encodeCheckedJson(_SCHEMA, { vote: "n2", term: 3 }));
  assert.match(text, /^\{"term":3,"vote":"n2","crc32c":"[0-9a-f]{8}"\}\n$/);
});

Deno.test("decodeCheckedJson() reads back what encodeCheckedJson() wrote", () => {
  for (const fields of [{ term: 0, vote: "" }, { term: 2 ** 53 - 1, vote: 'nödé "1"\n' }]) {
    const bytes = encodeCheckedJson(_SCHEMA, fields);
    assert.deepEqual(decodeCheckedJson("f.json", bytes, _SCHEMA), fields);
  }
});

Deno.test("decodeCheckedJson() accepts a file reformatted by hand", () => {
  const compact = JSON.parse(_text(encodeCheckedJson(_SCHEMA, { term: 3, vote: "n2" })));
  const pretty = _bytes(JSON.stringify(compact, null, 2));
  assert.deepEqual(decodeCheckedJson("f.json", pretty, _SCHEMA), { term: 3, vote: "n2" });
});

Deno.test("decodeCheckedJson() names the file and the problem when the content is bad", () => {
  const good = JSON.parse(_text(encodeCheckedJson(_SCHEMA, { term: 3, vote: "n2" })));
  const cases: [string, string][] = [
    ['{"term":3', "not valid JSON"],
    ["", "not valid JSON"],
    ["[1]", "expected a JSON object, found [1]"],
    [JSON.stringify({ ...good, extra: 1 }), 'unknown field "extra"'],
    [JSON.stringify({ vote: "n2", crc32c: good.crc32c }), 'missing field "term"'],
    [
      JSON.stringify({ ...good, term: -1 }),
      'field "term" must be a non-negative integer, found -1',
    ],
    [JSON.stringify({ ...good, vote: 7 }), 'field "vote" must be a string, found 7'],
    [
      JSON.stringify({ ...good, crc32c: 5 }),
      'field "crc32c" must be 8 lowercase hex digits, found 5',
    ],
    [
      JSON.stringify({ ...good, term: 4 }),
      `checksum mismatch (stored "${good.crc32c}", computed "`,
    ],
  ];
  for (const [content, reason] of cases) {
    assert.throws(() => decodeCheckedJson("dir/f.json", _bytes(content), _SCHEMA), (error) => {
      assert.ok(error instanceof CorruptFileError);
      assert.equal(error.path, "dir/f.json");
      assert.ok(error.message.startsWith(`"dir/f.json" is corrupt: ${reason}`), error.message);
      return true;
    });
  }
});

Deno.test("encodeCheckedJson() rejects values the decoder would refuse", () => {
  assert.throws(() => encodeCheckedJson(_SCHEMA, { term: 1.5, vote: "" }), {
    name: "RangeError",
    message: 'Field "term" must be a non-negative safe integer, found 1.5',
  });
  assert.throws(
    () => encodeCheckedJson(_SCHEMA, { term: 1, vote: null as unknown as string }),
    { name: "TypeError", message: 'Field "vote" must be a string, found null' },
  );
});

Deno.test("an optional string field may be left out, and then changes neither the bytes nor the checksum", () => {
  const schema = { id: "string?", term: "integer", vote: "string" } as const;
  const without = encodeCheckedJson(schema, { term: 3, vote: "n2" });
  assert.equal(_text(without), _text(encodeCheckedJson(_SCHEMA, { term: 3, vote: "n2" })));
  assert.deepEqual(decodeCheckedJson("f.json", without, schema), { term: 3, vote: "n2" });

  const withId = encodeCheckedJson(schema, { id: "n1", term: 3, vote: "n2" });
  assert.match(_text(withId), /^\{"id":"n1","term":3,"vote":"n2","crc32c":"[0-9a-f]{8}"\}\n$/);
  assert.deepEqual(decodeCheckedJson("f.json", withId, schema), { id: "n1", term: 3, vote: "n2" });
  // Still checksummed and checked when present: changed, of the wrong kind, or unknown to a
  // schema without it.
  const parsed = JSON.parse(_text(withId));
  for (
    const [bad, problem] of [
      [{ ...parsed, id: "n9" }, "checksum mismatch"],
      [{ ...parsed, id: 7 }, 'field "id" must be a string'],
    ] as const
  ) {
    assert.throws(
      () => decodeCheckedJson("f.json", _bytes(JSON.stringify(bad)), schema),
      (e: unknown) => e instanceof CorruptFileError && e.message.includes(problem),
    );
  }
  assert.throws(
    () => decodeCheckedJson("f.json", withId, _SCHEMA),
    (e: unknown) => e instanceof CorruptFileError && e.message.includes('unknown field "id"'),
  );
});
