/**
 * Reading a request's or response's body within a size limit, for the peer endpoints that take
 * whole bodies and the answers to members queries, and joining byte chunks.
 *
 * @module
 */

/**
 * Reads a request's or response's whole body, or returns null (and stops reading) once it exceeds
 * `limit` bytes; a `Content-Length` above `limit` is refused before anything is read.
 *
 * @param req The request or response.
 * @param limit The most bytes accepted.
 * @returns The body (empty without one), or null when it is too large.
 */
export async function readBodyWithin(
  req: Request | Response,
  limit: number,
): Promise<Uint8Array | null> {
  const declared = req.headers.get("content-length");
  if (declared !== null && Number(declared) > limit) return null;
  if (req.body === null) return new Uint8Array(0);
  if (declared !== null) return new Uint8Array(await req.arrayBuffer());
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel().catch(() => {});
      return null;
    }
    chunks.push(value);
  }
  if (chunks.length === 1) return chunks[0]!;
  return concatBytes(chunks);
}

/**
 * Joins byte chunks into one new array.
 *
 * @param parts The chunks, in order.
 * @returns Their bytes, one after the other.
 */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  let total = 0;
  for (const p of parts) total += p.byteLength;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}
