import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { makeCertificates, TOKEN_ROLES, writeTokensFile } from "./certs.ts";

Deno.test("makeCertificates: node certificates name the node and chain to the CA", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const certs = await makeCertificates(dir, {
      nodes: ["node-1", "node-2"],
      hosts: ["raftkv-0.example"],
      untrustedNodes: ["node-9"],
    });
    const ca = new X509Certificate(await Deno.readTextFile(certs.ca));
    const other = new X509Certificate(await Deno.readTextFile(`${dir}/other-ca.crt`));
    for (const id of ["node-1", "node-2"]) {
      const cert = new X509Certificate(await Deno.readTextFile(certs.node(id).cert));
      assert.match(cert.subject, new RegExp(`CN=${id}`));
      assert.ok(cert.verify(ca.publicKey), `${id} is signed by the CA`);
      assert.ok(cert.checkHost("localhost"));
      assert.ok(cert.checkHost("raftkv-0.example"));
      assert.ok(cert.checkIP("127.0.0.1"));
      assert.equal((await Deno.stat(certs.node(id).key)).mode! & 0o777, 0o600);
    }
    const stranger = new X509Certificate(await Deno.readTextFile(certs.node("node-9").cert));
    assert.ok(!stranger.verify(ca.publicKey));
    assert.ok(stranger.verify(other.publicKey));
    assert.throws(() => certs.node("node-3"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeTokensFile: one fresh token per role, mode 0600, never over a file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/tokens.json`;
    const tokens = await writeTokensFile(path, "x-");
    const entries = JSON.parse(await Deno.readTextFile(path));
    assert.deepEqual(entries.map((e: { role: string }) => e.role), [...TOKEN_ROLES]);
    assert.deepEqual(entries.map((e: { name: string }) => e.name), [
      "x-read",
      "x-write",
      "x-admin",
    ]);
    for (const e of entries) {
      assert.match(e.token, /^[0-9a-f]{64}$/);
      assert.equal(tokens[e.role as keyof typeof tokens], e.token);
    }
    assert.equal(new Set(entries.map((e: { token: string }) => e.token)).size, 3);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    await assert.rejects(writeTokensFile(path), Deno.errors.AlreadyExists);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("makeCertificates with a validity: renewed node certificates of the same CA for exactly that period", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const certs = await makeCertificates(dir, { nodes: ["node-1"] });
    const ca = new X509Certificate(await Deno.readTextFile(certs.ca));
    await makeCertificates(dir, {
      nodes: ["node-1"],
      renew: true,
      validity: { from: "20200101000000Z", to: "20210101000000Z" },
    });
    const cert = new X509Certificate(await Deno.readTextFile(certs.node("node-1").cert));
    assert.equal(Date.parse(cert.validFrom), Date.parse("2020-01-01T00:00:00Z"));
    assert.equal(Date.parse(cert.validTo), Date.parse("2021-01-01T00:00:00Z"));
    assert.ok(cert.verify(ca.publicKey));
    assert.match(cert.subject, /CN=node-1/);
    assert.ok(cert.checkHost("localhost"));
    // Only the CA's files and the node's stay behind (no database of openssl ca).
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names.filter((n) => n.startsWith("ca-db-")), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
