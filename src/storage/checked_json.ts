/**
 * The format of the storage layer's small JSON files: one flat JSON object whose `crc32c` field
 * checksums the other fields.
 *
 * The checksum is the CRC-32C, as 8 lowercase hex digits, of the UTF-8 bytes of `JSON.stringify`
 * of the other fields in schema order. It is recomputed from the parsed values on load, so the
 * file may be reformatted by hand without breaking it, but any changed value is caught.
 *
 * @module
 */

import { crc32c } from "./crc32c.ts";
import { CorruptFileError } from "./errors.ts";

/**
 * The kind of each field: a non-negative safe integer, a string, or a string that may be absent
 * (`"string?"`: a field added to a format later, so that files written before it still load; an
 * absent field is left out of the checksum, which therefore stays what it was).
 */
export type FieldKind = "integer" | "string" | "string?";

/** Field names mapped to their kinds, in the order they are written and checksummed. */
export type Schema = Record<string, FieldKind>;

/** The values a {@linkcode Schema} describes; a `"string?"` field may be left out. */
export type FieldsOf<S extends Schema> =
  & {
    [F in keyof S as S[F] extends "string?" ? never : F]: S[F] extends "integer" ? number : string;
  }
  & { [F in keyof S as S[F] extends "string?" ? F : never]?: string };

const _CRC_FIELD = "crc32c";

/**
 * Encodes `fields` (in `schema` order) with their checksum, as one line of JSON.
 *
 * @param schema The fields and their order.
 * @param fields The values.
 * @returns The UTF-8 bytes of the file, ending in a newline.
 * @throws {RangeError} If an integer field is not a non-negative safe integer.
 * @throws {TypeError} If a string field is not a string.
 *
 * @example Usage
 * ```ts
 * import { decodeCheckedJson, encodeCheckedJson } from "./checked_json.ts";
 *
 * const schema = { term: "integer", vote: "string" } as const;
 * const bytes = encodeCheckedJson(schema, { term: 3, vote: "node-2" });
 * console.assert(decodeCheckedJson("state.json", bytes, schema).vote === "node-2");
 * ```
 */
export function encodeCheckedJson<S extends Schema>(schema: S, fields: FieldsOf<S>): Uint8Array {
  const ordered = _ordered(schema, fields);
  const crc = _checksum(ordered);
  return new TextEncoder().encode(`${JSON.stringify({ ...ordered, [_CRC_FIELD]: crc })}\n`);
}

/**
 * Decodes and verifies a file written by {@linkcode encodeCheckedJson}.
 *
 * @param path The file's path, for error messages.
 * @param bytes The file's content.
 * @param schema The expected fields.
 * @returns The values.
 * @throws {CorruptFileError} If the content is not JSON, is not an object, lacks a field or has
 * an unknown one, has a value of the wrong kind, or fails its checksum.
 */
export function decodeCheckedJson<S extends Schema>(
  path: string,
  bytes: Uint8Array,
  schema: S,
): FieldsOf<S> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (error) {
    throw new CorruptFileError(path, `not valid JSON (${(error as Error).message})`, {
      cause: error,
    });
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new CorruptFileError(path, `expected a JSON object, found ${JSON.stringify(parsed)}`);
  }
  const record = parsed as Record<string, unknown>;
  for (const name of Object.keys(record)) {
    if (name !== _CRC_FIELD && !Object.hasOwn(schema, name)) {
      throw new CorruptFileError(path, `unknown field "${name}"`);
    }
  }
  const values: Record<string, number | string> = {};
  for (const [name, kind] of Object.entries(schema)) {
    const value = record[name];
    if (value === undefined && kind === "string?") continue;
    if (value === undefined) throw new CorruptFileError(path, `missing field "${name}"`);
    const ok = kind === "integer"
      ? typeof value === "number" && Number.isSafeInteger(value) && value >= 0
      : typeof value === "string";
    if (!ok) {
      const expected = kind === "integer" ? "a non-negative integer" : "a string";
      throw new CorruptFileError(
        path,
        `field "${name}" must be ${expected}, found ${JSON.stringify(value)}`,
      );
    }
    values[name] = value as number | string;
  }
  const stored = record[_CRC_FIELD];
  if (typeof stored !== "string" || !/^[0-9a-f]{8}$/.test(stored)) {
    throw new CorruptFileError(
      path,
      `field "${_CRC_FIELD}" must be 8 lowercase hex digits, found ${JSON.stringify(stored)}`,
    );
  }
  const computed = _checksum(values);
  if (stored !== computed) {
    throw new CorruptFileError(
      path,
      `checksum mismatch (stored "${stored}", computed "${computed}" from the fields)`,
    );
  }
  return values as FieldsOf<S>;
}

function _ordered(schema: Schema, fields: Record<string, unknown>): Record<string, unknown> {
  const ordered: Record<string, unknown> = {};
  for (const [name, kind] of Object.entries(schema)) {
    const value = fields[name];
    if (value === undefined && kind === "string?") continue;
    if (kind === "integer") {
      if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
        throw new RangeError(
          `Field "${name}" must be a non-negative safe integer, found ${String(value)}`,
        );
      }
    } else if (typeof value !== "string") {
      throw new TypeError(`Field "${name}" must be a string, found ${String(value)}`);
    }
    ordered[name] = value;
  }
  return ordered;
}

function _checksum(fields: Record<string, unknown>): string {
  const crc = crc32c(new TextEncoder().encode(JSON.stringify(fields)));
  return crc.toString(16).padStart(8, "0");
}
