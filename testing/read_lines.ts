/**
 * Reading a child process's output line by line: used by the process-cluster harness
 * (`testing/harness.ts`) and by the local cluster launcher (`scripts/cluster.ts`), which prefix
 * and keep each line a node prints.
 *
 * @module
 */

/**
 * Splits a byte stream into lines (without their `\n` or `\r\n`); a last line without a
 * newline is returned too.
 *
 * @param stream The stream to read to its end.
 * @returns The lines, as they arrive.
 */
export async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let pending = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    pending += chunk;
    let newline = pending.indexOf("\n");
    while (newline !== -1) {
      yield pending.slice(0, newline).replace(/\r$/, "");
      pending = pending.slice(newline + 1);
      newline = pending.indexOf("\n");
    }
  }
  if (pending !== "") yield pending.replace(/\r$/, "");
}
