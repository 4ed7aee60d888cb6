// Runs graphql-http's GraphQL-over-HTTP server audit against a real todoql
// server: starts the binary on a fresh SQLite file and a free port, runs every
// audit in order, prints one line per audit and exits 1 if any MUST fails.
//
//   TODOQL_BIN=path/to/todoql node audit.js              text table
//   TODOQL_BIN=path/to/todoql node audit.js --markdown   Markdown table (for RESULTS.md)
//   TODOQL_URL=http://host:port/graphql node audit.js    audit a server already running
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { serverAudits } from "graphql-http";

const packageDir = fileURLToPath(new URL(".", import.meta.url));
const markdown = process.argv.includes("--markdown");

/**
 * Cargo's target folder for this workspace. It is not always ../../target
 * (CARGO_TARGET_DIR, build.target-dir), so ask cargo; without cargo on PATH,
 * fall back to the default.
 */
function targetDir() {
  try {
    const metadata = execFileSync("cargo", ["metadata", "--format-version", "1", "--no-deps"], {
      cwd: resolve(packageDir, "../.."),
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
    return JSON.parse(metadata).target_directory;
  } catch {
    return resolve(packageDir, "../../target");
  }
}

/** $TODOQL_BIN (relative paths are taken from this folder), else the workspace's debug build. */
function serverBinary() {
  const path = process.env.TODOQL_BIN ? resolve(packageDir, process.env.TODOQL_BIN) : join(targetDir(), "debug", "todoql");
  if (!existsSync(path)) {
    throw new Error(`todoql binary not found at ${path}: build it or set TODOQL_BIN`);
  }
  return path;
}

/** Starts todoql; resolves to { url, stop } once it logs its address. */
async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), "todoql-http-audit-"));
  const child = spawn(serverBinary(), ["serve"], {
    env: {
      ...process.env,
      DATABASE_URL: `sqlite://${join(dir, "todoql.db")}`,
      LISTEN_ADDR: "127.0.0.1:0",
      BCRYPT_COST: "4",
      NO_COLOR: "1",
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const exited = new Promise((done) => child.once("exit", done));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };

  let log = "";
  try {
    const port = await new Promise((ready, fail) => {
      const timer = setTimeout(() => fail(new Error(`todoql did not start within 20 s:\n${log}`)), 20_000);
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (chunk) => {
        log += chunk;
        const match = /listening on http:\/\/127\.0\.0\.1:(\d+)\/graphql/.exec(log);
        if (match) {
          clearTimeout(timer);
          ready(Number(match[1]));
        }
      });
      child.once("error", (error) => {
        clearTimeout(timer);
        fail(error);
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        fail(new Error(`todoql exited early (code ${code}, signal ${signal}):\n${log}`));
      });
    });
    // Keep draining stderr so the server never blocks on a full pipe.
    child.stderr.removeAllListeners("data");
    child.stderr.resume();
    return { url: `http://127.0.0.1:${port}/graphql`, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

const RESULT = { ok: "pass", notice: "fail", warn: "warn", error: "FAIL" };

/** What the server answered, for a failed audit. */
async function describe(response) {
  if (!response) return "";
  let body = "";
  try {
    body = await response.clone().text();
  } catch {
    body = "(body already read)";
  }
  if (body.length > 200) body = `${body.slice(0, 200)}…`;
  return `${response.status} ${response.headers.get("content-type") ?? "(no content-type)"} ${body}`;
}

async function main() {
  const server = process.env.TODOQL_URL ? { url: process.env.TODOQL_URL, stop: async () => {} } : await startServer();
  const rows = [];
  try {
    // One after another (auditServer runs them all at once): easier to read in
    // the server's log, and the order is the spec's.
    for (const audit of serverAudits({ url: server.url })) {
      const result = await audit.fn();
      rows.push({
        id: result.id,
        level: result.name.split(" ")[0],
        result: RESULT[result.status],
        name: result.name,
        reason: result.status === "ok" ? "" : result.reason,
        answer: result.status === "ok" ? "" : await describe(result.response),
      });
    }
  } finally {
    await server.stop();
  }

  if (markdown) {
    const cell = (text) => text.replaceAll("|", "\\|").replaceAll("\n", " ");
    console.log("| id | level | result | audit | why it failed |");
    console.log("| --- | --- | --- | --- | --- |");
    for (const row of rows) {
      const why = row.reason ? `${row.reason}: got ${row.answer.split(" ")[0]}` : "";
      console.log(`| ${row.id} | ${row.level} | ${row.result} | ${cell(row.name)} | ${cell(why)} |`);
    }
  } else {
    console.log(`graphql-http server audit of ${server.url}\n`);
    console.log(`${"id".padEnd(4)}  ${"level".padEnd(6)}  ${"result".padEnd(6)}  name`);
    for (const row of rows) {
      console.log(`${row.id.padEnd(4)}  ${row.level.padEnd(6)}  ${row.result.padEnd(6)}  ${row.name}`);
      if (row.reason) console.log(`${" ".repeat(22)}↳ ${row.reason}; answer: ${row.answer}`);
    }
  }

  const count = (level, result) =>
    rows.filter((row) => row.level === level && (result === undefined || row.result === result)).length;
  const mustFailed = count("MUST") - count("MUST", "pass");
  console.log("");
  console.log(`MUST:   ${count("MUST", "pass")} of ${count("MUST")} passed`);
  console.log(`SHOULD: ${count("SHOULD", "pass")} of ${count("SHOULD")} passed`);
  console.log(`MAY:    ${count("MAY", "pass")} of ${count("MAY")} passed`);
  console.log(`musts: ${count("MUST", "pass")} passed, ${mustFailed} failed`);
  process.exitCode = mustFailed > 0 ? 1 : 0;
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 2;
});
