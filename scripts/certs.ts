/**
 * Makes what a TLS cluster with authentication needs, into one directory: `deno task certs`.
 *
 * - `ca.crt` / `ca.key`: a new CA (keep `ca.key` offline, or delete it once the certificates are
 *   made);
 * - `<node>.crt` / `<node>.key` per node: CN = the node id (the identity mutual TLS proves),
 *   valid for `localhost`, `127.0.0.1`, `::1` and every `--host`, for server and client use;
 * - `tokens.json`: one random bearer token per role (`read`, `write`, `admin`), for
 *   `--tokens-file`;
 * - `admin.token`: the admin token alone, for `RAFTKV_TOKEN` (a node that joins, the client).
 *
 * Keys and tokens are written 0600. Made with the `openssl` command (see `testing/certs.ts`).
 *
 * ```sh
 * # Docker (scripts/docker-cluster.sh with TLS_DIR=tls):
 * deno task certs --dir tls --nodes raftkv-1,raftkv-2,raftkv-3 \
 *   --host raftkv-1 --host raftkv-2 --host raftkv-3
 * # Kubernetes (deploy/k8s/tls): pods raftkv-0..4 of namespace raftkv
 * deno task certs --dir deploy/k8s/tls/secrets \
 *   --nodes raftkv-0,raftkv-1,raftkv-2,raftkv-3,raftkv-4 \
 *   --host '*.raftkv-peers.raftkv.svc.cluster.local' --host raftkv \
 *   --host raftkv.raftkv.svc --host raftkv.raftkv.svc.cluster.local
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { makeCertificates, TOKEN_ROLES, writeTokensFile } from "../testing/certs.ts";

const USAGE = `Usage: deno task certs --dir DIR --nodes ID,ID,... [--host NAME]... [--days N]

Writes DIR/ca.crt, DIR/<id>.crt and DIR/<id>.key per node (CN = the node id), DIR/tokens.json
(one random token per role: read, write, admin) and DIR/admin.token (the admin token alone, for
RAFTKV_TOKEN). DIR must not hold a CA already.`;

async function main(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        dir: { type: "string" },
        nodes: { type: "string" },
        host: { type: "string", multiple: true },
        days: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (e) {
    console.error(`certs: ${e instanceof Error ? e.message : e}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const nodes = (values.nodes ?? "").split(",").map((n) => n.trim()).filter((n) => n !== "");
  const days = values.days === undefined ? 365 : Number(values.days);
  if (values.dir === undefined || nodes.length === 0 || !(days > 0)) {
    console.error(USAGE);
    return 2;
  }
  await Deno.mkdir(values.dir, { recursive: true, mode: 0o700 });
  try {
    await Deno.stat(join(values.dir, "ca.crt"));
    console.error(`certs: ${join(values.dir, "ca.crt")} exists; use a new directory`);
    return 1;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const certs = await makeCertificates(values.dir, { nodes, hosts: values.host ?? [], days });
  const path = join(values.dir, "tokens.json");
  const tokens = await writeTokensFile(path);
  const adminPath = join(values.dir, "admin.token");
  await Deno.writeTextFile(adminPath, tokens.admin, { mode: 0o600, createNew: true });
  await Deno.chmod(adminPath, 0o600);
  console.log(`CA:     ${certs.ca}`);
  for (const id of nodes) console.log(`${id}: ${certs.node(id).cert} ${certs.node(id).key}`);
  console.log(`tokens: ${path} (roles ${TOKEN_ROLES.join(", ")}), admin's alone: ${adminPath}`);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
