// Starts a real todoql binary on a fresh SQLite file and a free port.
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export interface RunningServer {
  /** http://127.0.0.1:PORT/graphql */
  url: string;
  /** ws://127.0.0.1:PORT/graphql */
  wsUrl: string;
  stop(): Promise<void>;
}

/** This package's folder (tests/clients): compiled files live in dist/. */
const packageDir = fileURLToPath(new URL("..", import.meta.url));

/**
 * Cargo's target folder for this workspace. It is not always ../../target
 * (CARGO_TARGET_DIR, build.target-dir), so ask cargo; without cargo on PATH,
 * fall back to the default.
 */
function targetDir(): string {
  try {
    const metadata = execFileSync("cargo", ["metadata", "--format-version", "1", "--no-deps"], {
      cwd: resolve(packageDir, "../.."),
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    });
    return (JSON.parse(metadata) as { target_directory: string }).target_directory;
  } catch {
    return resolve(packageDir, "../../target");
  }
}

/** $TODOQL_BIN, else the workspace's release build, else its debug build. */
export function serverBinary(): string {
  const fromEnv = process.env.TODOQL_BIN;
  if (fromEnv) return resolve(fromEnv);
  const target = targetDir();
  const candidates = ["release", "debug"].map((profile) => resolve(target, profile, "todoql"));
  const found = candidates.find((path) => existsSync(path));
  if (!found) {
    throw new Error(`todoql binary not found (tried ${candidates.join(", ")}): run cargo build --release or set TODOQL_BIN`);
  }
  return found;
}

export async function startServer(): Promise<RunningServer> {
  const dir = mkdtempSync(join(tmpdir(), "todoql-clients-"));
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
  const exited = new Promise<void>((done) => child.once("exit", () => done()));

  let log = "";
  const port = await new Promise<number>((ready, fail) => {
    const timer = setTimeout(() => fail(new Error(`todoql did not start within 20 s:\n${log}`)), 20_000);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk: string) => {
      log += chunk;
      const match = /listening on http:\/\/127\.0\.0\.1:(\d+)\/graphql/.exec(log);
      if (match?.[1]) {
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
  }).catch(async (error: unknown) => {
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
    throw error;
  });
  // Keep draining stderr so the server never blocks on a full pipe.
  child.stderr.removeAllListeners("data");
  child.stderr.resume();

  return {
    url: `http://127.0.0.1:${port}/graphql`,
    wsUrl: `ws://127.0.0.1:${port}/graphql`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
