import assert from "node:assert/strict";
import { FLAGS } from "../flags.ts";
import { clientArgs, clientHelp, COMMANDS, isClientCommand } from "./client.ts";
import { commandHelp } from "./command.ts";
import {
  CLIENT_ENV_VARS,
  ClientError,
  EXIT,
  GLOBAL_OPTIONS,
  parseCommandLine,
  parseEndpoints,
  resolveGlobals,
} from "./options.ts";
import { formatTable } from "./output.ts";

function _usage(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof ClientError, String(error));
    assert.equal(error.exitCode, EXIT.usage);
    assert.match(error.message, message);
    return true;
  });
}

Deno.test("the exit codes are distinct", () => {
  const codes = Object.values(EXIT);
  assert.equal(new Set(codes).size, codes.length);
});

Deno.test("parseCommandLine() takes options anywhere, both spellings, and -- before a dash key", () => {
  const line = parseCommandLine(
    ["k", "-o", "json", "--timeout=2s", "--endpoints", "a:1", "--", "-v", "--help"],
    GLOBAL_OPTIONS,
  );
  assert.deepEqual(line.positionals, ["k", "-v", "--help"]);
  assert.deepEqual(line.values.get("--output"), { value: "json", origin: "-o" });
  assert.equal(line.values.get("--timeout")?.value, "2s");
  assert.equal(line.values.get("--endpoints")?.value, "a:1");
  assert.deepEqual([...line.switches], []);
  assert.deepEqual([...parseCommandLine(["-h"], GLOBAL_OPTIONS).switches], ["--help"]);
  assert.deepEqual(parseCommandLine(["-"], GLOBAL_OPTIONS).positionals, ["-"]);
});

Deno.test("parseCommandLine() refuses unknown options with a suggestion, and missing values", () => {
  _usage(() => parseCommandLine(["--endpoint", "x"], GLOBAL_OPTIONS), /"--endpoints"/);
  _usage(() => parseCommandLine(["--timeout"], GLOBAL_OPTIONS), /needs a value/);
  _usage(() => parseCommandLine(["--help=yes"], GLOBAL_OPTIONS), /takes no value/);
});

Deno.test("parseEndpoints() reads URLs and host:port, keeps the order, drops duplicates", () => {
  assert.deepEqual(
    parseEndpoints({
      value: " 127.0.0.1:7777, https://kv.example:443/ ,http://[::1]:7778,127.0.0.1:7777,",
      origin: "--endpoints",
    }),
    ["http://127.0.0.1:7777", "https://kv.example", "http://[::1]:7778"],
  );
  for (const bad of ["", " , ", "ftp://x:1", "http://x:1/v1", "http://u@x:1", "http://x:99999"]) {
    _usage(() => parseEndpoints({ value: bad, origin: "RAFTKV_ENDPOINTS" }), /RAFTKV_ENDPOINTS/);
  }
});

Deno.test("resolveGlobals() takes the option, else the variable, else the default", () => {
  const env: Record<string, string> = {
    RAFTKV_ENDPOINTS: "127.0.0.1:1,127.0.0.1:2",
    RAFTKV_TOKEN: "t0k",
    RAFTKV_OUTPUT: "json",
    RAFTKV_TIMEOUT: "",
  };
  const fromEnv = resolveGlobals(parseCommandLine([], GLOBAL_OPTIONS), (n) => env[n]);
  assert.deepEqual(fromEnv, {
    endpoints: ["http://127.0.0.1:1", "http://127.0.0.1:2"],
    cacert: null,
    token: "t0k",
    output: "json",
    timeoutMs: 5000,
  });
  const line = parseCommandLine(
    [
      "--endpoints",
      "h:3",
      "--token",
      "x",
      "-o",
      "table",
      "--timeout",
      "250ms",
      "--cacert",
      "ca.pem",
    ],
    GLOBAL_OPTIONS,
  );
  assert.deepEqual(resolveGlobals(line, (n) => env[n]), {
    endpoints: ["http://h:3"],
    cacert: "ca.pem",
    token: "x",
    output: "table",
    timeoutMs: 250,
  });
  assert.deepEqual(
    resolveGlobals(parseCommandLine([], GLOBAL_OPTIONS), () => undefined).endpoints,
    [
      "http://127.0.0.1:7777",
    ],
  );
  _usage(
    () => resolveGlobals(parseCommandLine(["-o", "yaml"], GLOBAL_OPTIONS), () => undefined),
    /-o: "yaml" is not "table" or "json"/,
  );
  _usage(
    () => resolveGlobals(parseCommandLine([], GLOBAL_OPTIONS), () => "0s"),
    /RAFTKV_\w+/,
  );
});

Deno.test("the client's variables are not the node's", () => {
  const node = new Set(FLAGS.flatMap((flag) => flag.env === null ? [] : [flag.env]));
  assert.deepEqual(CLIENT_ENV_VARS.filter((name) => node.has(name)), []);
  assert.deepEqual(CLIENT_ENV_VARS, [
    "RAFTKV_ENDPOINTS",
    "RAFTKV_CACERT",
    "RAFTKV_TOKEN",
    "RAFTKV_OUTPUT",
    "RAFTKV_TIMEOUT",
  ]);
});

Deno.test("every command has a --help within 100 columns, and the overview lists them all", () => {
  const overview = clientHelp();
  for (const command of COMMANDS) {
    const text = commandHelp(command);
    assert.ok(text.startsWith(`Usage: raftkv ${command.name} [options]`), command.name);
    for (const option of [...command.options, ...GLOBAL_OPTIONS]) {
      assert.ok(text.includes(option.name), `${command.name} ${option.name}`);
    }
    for (const line of text.split("\n")) assert.ok(line.length <= 100, line);
    assert.ok(overview.includes(`  ${command.name} ${command.args}`), command.name);
    assert.ok(isClientCommand(command.name.split(" ")[0]), command.name);
  }
  for (const line of overview.split("\n")) assert.ok(line.length <= 100, line);
  assert.ok(!isClientCommand("--id"));
  assert.ok(!isClientCommand(undefined));
});

Deno.test("clientArgs() takes global options before the command, and leaves a node's flags alone", () => {
  const line = (args: string[]) => clientArgs(args)?.join(" ") ?? null;
  assert.equal(line(["get", "k"]), "get k");
  assert.equal(line(["--endpoints", "h:1", "get", "k"]), "get --endpoints h:1 k");
  assert.equal(
    line(["--endpoints=h:1", "--timeout", "2s", "del", "k"]),
    "del --endpoints=h:1 --timeout 2s k",
  );
  assert.equal(
    line(["-o", "json", "--token", "t", "lease", "grant", "5s"]),
    "lease grant -o json --token t 5s",
  );
  assert.equal(
    line(["--cacert", "ca.pem", "snapshot", "save", "b.snap"]),
    "snapshot save --cacert ca.pem b.snap",
  );
  assert.equal(
    line(["--endpoints", "h:1", "lock", "l", "--", "sh"]),
    "lock --endpoints h:1 l -- sh",
  );
  assert.equal(line(["--endpoints", "h:1", "help"]), "help --endpoints h:1");
  // A node's command line, or an option without its value: not the client's.
  assert.equal(line(["--id", "node-1"]), null);
  assert.equal(line(["--endpoints", "h:1", "--id", "node-1"]), null);
  assert.equal(line(["--endpoints"]), null);
  assert.equal(line(["--help"]), null);
  assert.equal(line([]), null);
});

Deno.test("formatTable() pads every column but the last", () => {
  assert.equal(
    formatTable(["ID", "ROLE", "NOTE"], [["node-1", "leader", ""], ["n2", "follower", "x y"]]),
    "ID      ROLE      NOTE\nnode-1  leader\nn2      follower  x y",
  );
});
