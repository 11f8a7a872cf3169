import assert from "node:assert/strict";
import { ConfigError } from "./errors.ts";
import { closestName, DEFAULTS, ENV_PREFIX, FLAGS, helpText, tokenizeArgv } from "./flags.ts";

Deno.test("FLAGS names each flag's environment variable after the flag", () => {
  for (const flag of FLAGS) {
    if (flag.value === null) {
      assert.equal(flag.env, null, flag.name);
      continue;
    }
    assert.equal(
      flag.env,
      ENV_PREFIX + flag.name.slice(2).toUpperCase().replaceAll("-", "_"),
      flag.name,
    );
  }
});

Deno.test("FLAGS lists no name or alias twice", () => {
  const names = FLAGS.flatMap((flag) => [flag.name, ...flag.aliases]);
  assert.equal(new Set(names).size, names.length);
});

Deno.test("FLAGS documents every value-taking flag's default", () => {
  for (const flag of FLAGS) {
    assert.ok(flag.description !== "", flag.name);
    if (flag.value !== null) assert.ok(flag.default !== "", flag.name);
  }
  const byName = new Map(FLAGS.map((flag) => [flag.name, flag.default]));
  assert.equal(byName.get("--election-timeout"), `${DEFAULTS.electionTimeoutMs}ms`);
  assert.match(byName.get("--listen-host")!, /^the host of this node's rpc_url/);
});

Deno.test("helpText() mentions every flag, alias, default and variable in the table", () => {
  const text = helpText();
  for (const flag of FLAGS) {
    for (const name of [flag.name, ...flag.aliases]) assert.ok(text.includes(name), name);
    if (flag.env !== null) assert.ok(text.includes(`env: ${flag.env}\n`), flag.env);
    // Defaults may wrap, so compare them with whitespace collapsed.
    const flat = text.replace(/\s+/g, " ");
    if (flag.default !== "") assert.ok(flat.includes(`default: ${flag.default}`), flag.name);
  }
});

Deno.test("helpText() fits in 100 columns", () => {
  for (const line of helpText().split("\n")) assert.ok(line.length <= 100, line);
});

Deno.test("tokenizeArgv() accepts both --flag value and --flag=value", () => {
  const parsed = tokenizeArgv(["--id", "node-1", "--api-port=7000", "--data-dir=a=b"]);
  assert.deepEqual(parsed.values.get("--id"), { value: "node-1", origin: "--id" });
  assert.deepEqual(parsed.values.get("--api-port"), { value: "7000", origin: "--api-port" });
  assert.equal(parsed.values.get("--data-dir")?.value, "a=b");
});

Deno.test("tokenizeArgv() files an alias under the canonical flag, keeping the typed name", () => {
  const parsed = tokenizeArgv(["--heartbeat-interval", "50"]);
  assert.deepEqual(parsed.values.get("--heartbeat"), {
    value: "50",
    origin: "--heartbeat-interval",
  });
});

Deno.test("tokenizeArgv() keeps the last value of a repeated flag", () => {
  assert.equal(tokenizeArgv(["--id", "a", "--id=b"]).values.get("--id")?.value, "b");
});

Deno.test("tokenizeArgv() records switches", () => {
  assert.deepEqual([...tokenizeArgv(["-h", "--version"]).switches], ["--help", "--version"]);
});

Deno.test("tokenizeArgv() rejects a switch given a value", () => {
  assert.throws(() => tokenizeArgv(["--help=yes"]), {
    name: "ConfigError",
    message: 'Flag --help takes no value, got "yes"',
  });
});

Deno.test("tokenizeArgv() rejects a missing value, naming the flag", () => {
  for (const argv of [["--id"], ["--id", "--api-port", "1"], ["--data-dir", "-h"]]) {
    assert.throws(() => tokenizeArgv(argv), {
      name: "ConfigError",
      message: new RegExp(`^Flag ${argv[0]} needs a value: ${argv[0]} <`),
    });
  }
  assert.throws(() => tokenizeArgv(["--id="]), {
    name: "ConfigError",
    message: "Flag --id needs a non-empty value: --id=<id>",
  });
});

Deno.test("tokenizeArgv() rejects positional arguments", () => {
  for (const token of ["node-1", "-", "--"]) {
    assert.throws(() => tokenizeArgv([token]), {
      name: "ConfigError",
      message: new RegExp(`^Unexpected argument ${JSON.stringify(token)}`),
    });
  }
});

Deno.test("tokenizeArgv() takes a word first for a mistyped client command", () => {
  assert.throws(() => tokenizeArgv(["frob"]), {
    name: "ConfigError",
    message: `Unknown command "frob": 'raftkv help' lists the client's commands (a node takes ` +
      'only flags, such as "--id node-1")',
  });
  // Not first, or not a word: a stray argument of a node's command line.
  for (const argv of [["--id", "n", "frob"], ["node-1"]]) {
    assert.throws(() => tokenizeArgv(argv), { message: /^Unexpected argument / });
  }
});

Deno.test("tokenizeArgv() rejects an unknown flag and suggests the closest one", () => {
  assert.throws(() => tokenizeArgv(["--api-prot", "1"]), {
    name: "ConfigError",
    message: 'Unknown flag "--api-prot" (did you mean "--api-port"?); run with --help to list ' +
      "the flags",
  });
  assert.throws(() => tokenizeArgv(["--colour=red"]), {
    name: "ConfigError",
    message: 'Unknown flag "--colour"; run with --help to list the flags',
  });
});

Deno.test("closestName() suggests on typos, swaps, underscores, case and prefixes", () => {
  const names = FLAGS.map((flag) => flag.name);
  assert.equal(closestName("--api-prot", names), "--api-port");
  assert.equal(closestName("--rpc-prot", names), "--rpc-port");
  assert.equal(closestName("--api_port", names), "--api-port");
  assert.equal(closestName("--API-PORT", names), "--api-port");
  assert.equal(closestName("-id", names), "--id");
  assert.equal(closestName("--election", names), "--election-timeout");
  assert.equal(closestName("--heartbeat-ms", names), "--heartbeat");
  assert.equal(closestName("--datadir", names), "--data-dir");
});

Deno.test("closestName() stays quiet when nothing is an obvious match", () => {
  const names = FLAGS.map((flag) => flag.name);
  assert.equal(closestName("--colour", names), undefined);
  assert.equal(closestName("--port", names), undefined);
  assert.equal(closestName("--k8s", names), undefined);
});

Deno.test("tokenizeArgv() throws ConfigError for every problem", () => {
  assert.throws(() => tokenizeArgv(["x"]), ConfigError);
});
