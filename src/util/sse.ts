/**
 * A reader of Server-Sent Events (`text/event-stream`), as the HTML standard parses them: for
 * the command-line client's `watch` and for tests.
 *
 * @module
 */

/** One event of a stream. */
export interface SseMessage {
  /** The `event:` field, `"message"` when absent. */
  event: string;
  /** The `data:` lines, joined with newlines. */
  data: string;
  /** The `id:` field of this event, or null when it had none. */
  id: string | null;
}

/**
 * Reads the events of a stream until it ends; comment lines (heartbeats) are skipped, but
 * `onComment` sees them.
 *
 * @param body The response body.
 * @param onComment Called with each comment line's text.
 * @returns The events, in order.
 */
export async function* readSse(
  body: ReadableStream<Uint8Array>,
  onComment?: (text: string) => void,
): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "";
  let data: string[] = [];
  let id: string | null = null;
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (data.length > 0) yield { event: event || "message", data: data.join("\n"), id };
        event = "";
        data = [];
        id = null;
        continue;
      }
      if (line.startsWith(":")) {
        onComment?.(line.slice(1).trim());
        continue;
      }
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
  }
}
