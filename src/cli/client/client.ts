/**
 * The command-line client in the node's binary, in the spirit of `etcdctl`: `raftkv get KEY`,
 * `put`, `del`, `list`, `txn`, `watch`, `lock`, `elect`, `lease grant|keepalive|revoke|list`,
 * `status`, `members list|add|remove`, `leader transfer`, `snapshot save|restore`, `verify`, and
 * `raftkv help`. It talks only the public REST API.
 *
 * @module
 */

import {
  checkArity,
  type Command,
  CommandContext,
  commandHelp,
  EXIT_CODES_HELP,
} from "./command.ts";
import { DEL, GET, LIST, PUT } from "./kv.ts";
import { LEADER_TRANSFER } from "./leader.ts";
import { LEASE_GRANT, LEASE_KEEPALIVE, LEASE_LIST, LEASE_REVOKE } from "./lease.ts";
import { ELECT, LOCK } from "./lock.ts";
import {
  ClientError,
  formatOptions,
  GLOBAL_OPTIONS,
  parseCommandLine,
  resolveGlobals,
  wrap,
} from "./options.ts";
import { type ClientIo, REAL_IO, reportError } from "./output.ts";
import { SNAPSHOT_RESTORE, SNAPSHOT_SAVE } from "./snapshot.ts";
import { STATUS } from "./status.ts";
import { MEMBERS_ADD, MEMBERS_LIST, MEMBERS_REMOVE } from "./members.ts";
import { TXN } from "./txn.ts";
import { VERIFY } from "./verify.ts";
import { WATCH } from "./watch.ts";

export { CLIENT_ENV_VARS, EXIT } from "./options.ts";

/** Every subcommand, in help order. */
export const COMMANDS: readonly Command[] = [
  GET,
  PUT,
  DEL,
  LIST,
  TXN,
  LEASE_GRANT,
  LEASE_KEEPALIVE,
  LEASE_REVOKE,
  LEASE_LIST,
  WATCH,
  LOCK,
  ELECT,
  STATUS,
  MEMBERS_LIST,
  MEMBERS_ADD,
  MEMBERS_REMOVE,
  LEADER_TRANSFER,
  SNAPSHOT_SAVE,
  SNAPSHOT_RESTORE,
  VERIFY,
];

const _FIRST_WORDS = new Set([...COMMANDS.map((c) => c.name.split(" ")[0]!), "help"]);

/**
 * Whether `word` (the first argument) names a client subcommand, so that the program runs the
 * client instead of a node (a node's arguments are all flags).
 *
 * @param word The first argument.
 * @returns True for `get`, `put`, `del`, `list`, `txn`, `watch`, `lock`, `elect`, `lease`, `status`,
 * `members`,
 * `leader`, `snapshot`, `verify` and `help`.
 */
export function isClientCommand(word: string | undefined): boolean {
  return word !== undefined && _FIRST_WORDS.has(word);
}

/**
 * The client's command line when `args` is one, the subcommand first: global options may come
 * before it (`raftkv --endpoints h:7777 get k`, as etcdctl takes them), and are moved after its
 * name. Null when `args` is not a client command line (a node's flags).
 *
 * @example Usage
 * ```ts
 * import { clientArgs } from "./client.ts";
 *
 * const line = clientArgs(["--endpoints", "h:7777", "-o", "json", "lease", "grant", "10s"]);
 * console.assert(line?.join(" ") === "lease grant --endpoints h:7777 -o json 10s");
 * console.assert(clientArgs(["--id", "node-1"]) === null);
 * ```
 *
 * @param args The program's arguments.
 * @returns The arguments for {@linkcode runClient}, or null.
 */
export function clientArgs(args: readonly string[]): string[] | null {
  let i = 0;
  while (i < args.length) {
    const arg = args[i]!;
    const eq = arg.startsWith("--") ? arg.indexOf("=") : -1;
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    const global = GLOBAL_OPTIONS.find((o) =>
      o.value !== null && (o.name === name || (eq < 0 && o.short === name))
    );
    if (global === undefined) break;
    i += eq > 0 ? 1 : 2;
  }
  if (!isClientCommand(args[i])) return null;
  const words = _find(`${args[i]} ${args[i + 1]}`) === undefined ? 1 : 2;
  return [...args.slice(i, i + words), ...args.slice(0, i), ...args.slice(i + words)];
}

/**
 * The overview printed by `raftkv help`: the subcommands, the global options and the exit codes.
 *
 * @returns The text.
 */
export function clientHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => `${c.name} ${c.args}`.length)) + 4;
  return [
    "Usage: raftkv <command> [options] [arguments]",
    "",
    "The command-line client: it talks to a cluster through its public REST API only.",
    "",
    "Commands:",
    ...COMMANDS.map((c) => `  ${`${c.name} ${c.args}`.padEnd(width)}${c.summary}`),
    `  ${"help".padEnd(width)}this text; raftkv <command> --help for a command's own`,
    "",
    "Global options (every command):",
    ...formatOptions(GLOBAL_OPTIONS),
    "",
    ...wrap(EXIT_CODES_HELP, 100),
    "",
    "Run a node with raftkv --id <id> [flags] (raftkv --help lists the node's flags).",
  ].join("\n");
}

/**
 * Runs a client subcommand.
 *
 * @example Usage
 * ```ts ignore
 * const code = await runClient(["get", "a", "--endpoints", "127.0.0.1:7777,127.0.0.1:7778"]);
 * ```
 *
 * @param args The arguments, the subcommand's name first.
 * @param io Where to write and what to read (default: the process's own).
 * @returns The exit code (see `EXIT`).
 */
export async function runClient(args: readonly string[], io: ClientIo = REAL_IO): Promise<number> {
  const [first, second] = args;
  if (first === "help") {
    const command = _find(args.slice(1).join(" "));
    io.out(command === undefined ? clientHelp() : commandHelp(command));
    return 0;
  }
  const two = _find(`${first} ${second}`);
  const command = two ?? _find(first ?? "");
  const rest = args.slice(two === undefined ? 1 : 2);
  const json = _wantsJson(rest, io);
  if (command === undefined) {
    // A group without its subcommand (`raftkv snapshot`): list the group's commands.
    const group = COMMANDS.filter((c) => c.name.startsWith(`${first} `));
    const helpAsked = rest.includes("--help") || rest.includes("-h");
    const text = group.map((c) => `  raftkv ${c.name} ${c.args}`.padEnd(40) + c.summary).join("\n");
    if (helpAsked) {
      io.out(`Usage:\n${text}\n\nRun raftkv ${first} <command> --help for more.`);
      return 0;
    }
    const what = second === undefined || second.startsWith("-")
      ? "a subcommand"
      : `a subcommand, not ${JSON.stringify(second)}`;
    return reportError(
      io,
      json,
      first ?? "",
      new ClientError(`${first} needs ${what}:\n${text}`, 2),
    );
  }
  let ctx: CommandContext | undefined;
  try {
    const line = parseCommandLine(rest, [...GLOBAL_OPTIONS, ...command.options]);
    if (line.switches.has("--help")) {
      io.out(commandHelp(command));
      return 0;
    }
    checkArity(command, line.positionals);
    ctx = new CommandContext(io, resolveGlobals(line, io.env), line);
    return await command.run(ctx);
  } catch (error) {
    if (!(error instanceof ClientError)) throw error;
    return reportError(io, json, command.name, error);
  } finally {
    ctx?.close();
  }
}

function _find(name: string): Command | undefined {
  return COMMANDS.find((c) => c.name === name);
}

/** Whether the command line or environment asks for JSON (known before the full parse). */
function _wantsJson(args: readonly string[], io: ClientIo): boolean {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") break;
    if ((arg === "-o" || arg === "--output") && args[i + 1] === "json") return true;
    if (arg === "-o=json" || arg === "--output=json") return true;
  }
  return args.every((a) => !/^(-o|--output)(=|$)/.test(a)) && io.env("RAFTKV_OUTPUT") === "json";
}
