import assert from "node:assert/strict";
import { apiPortWarning, FETCH_BAD_PORTS, fetchBlockedPort } from "./fetch_ports.ts";

/** Whether this Deno's fetch refuses the port itself (before connecting). */
async function refused(port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2_000) });
    await res.body?.cancel();
    return false;
  } catch (error) {
    return /are blocked/.test((error as Error).message);
  }
}

Deno.test("FETCH_BAD_PORTS is the list this Deno's fetch refuses (each port, and its neighbours not)", async () => {
  const wrong: string[] = [];
  for (const port of FETCH_BAD_PORTS) {
    if (!await refused(port)) wrong.push(`${port} is listed, but fetch connects to it`);
    for (const near of [port - 1, port + 1]) {
      if (near < 1 || FETCH_BAD_PORTS.has(near)) continue;
      if (await refused(near)) wrong.push(`${near} is not listed, but fetch refuses it`);
    }
  }
  for (const port of [7777, 6670, 10081, 65535]) {
    if (await refused(port)) wrong.push(`${port} is not listed, but fetch refuses it`);
  }
  assert.deepEqual(wrong, []);
});

Deno.test("fetchBlockedPort() and apiPortWarning() look at the URL's port, default ports included", () => {
  assert.equal(fetchBlockedPort("http://localhost:10080"), 10080);
  assert.equal(fetchBlockedPort("https://[::1]:6666/v1"), 6666);
  assert.equal(fetchBlockedPort("http://localhost:7777"), null);
  assert.equal(fetchBlockedPort("http://localhost"), null);
  assert.equal(fetchBlockedPort("not a url"), null);
  assert.equal(apiPortWarning("http://localhost:7777"), null);
  assert.match(apiPortWarning("http://localhost:6667")!, /^The API port 6667 \(api_url /);
});
