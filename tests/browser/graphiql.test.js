// Drives the GraphiQL page that todoql serves at GET /graphql in headless
// Chromium, the way a person would: load it (offline: every request must stay
// on the server's own 127.0.0.1 origin), sign up through the query editor and
// the Run button, then paste the token into the Headers editor and ask `me`.
//
//   npm ci
//   TODOQL_BIN=path/to/todoql npm test     (default: debug/todoql in cargo's target folder)
//   CHROMIUM_PATH=/path/to/chromium        (default /usr/bin/chromium)
//
// Screenshots go to screenshots/ (graphiql.png after signup, graphiql-me.png
// after `me`, failure.png when a step fails). The whole run is bounded by a
// 60 s watchdog; any failure exits non-zero.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const packageDir = fileURLToPath(new URL(".", import.meta.url));
const screenshotDir = join(packageDir, "screenshots");
const TOTAL_MS = 60_000;
const STEP_MS = 20_000;
const EMAIL = "browser@example.com";
// Short lines, so that the whole operation shows in the screenshot.
const SIGNUP = `mutation {
  signup(input: {
    email: "${EMAIL}"
    password: "password1"
  }) {
    token
    user { email }
  }
}`;
const ME = "{\n  me { email }\n}";

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
  if (!existsSync(path)) throw new Error(`todoql binary not found at ${path}: build it or set TODOQL_BIN`);
  return path;
}

/** $CHROMIUM_PATH, else Debian's chromium. */
function chromiumBinary() {
  const path = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
  if (!existsSync(path)) {
    throw new Error(`Chromium not found at ${path}: apt-get install -y chromium, or set CHROMIUM_PATH`);
  }
  return path;
}

// Everything started here, so that both `after` and the watchdog can stop it.
const scratch = mkdtempSync(join(tmpdir(), "todoql-browser-"));
let server; // { origin, url, child, log(), stop() }
let browser;
let page;

/** Starts todoql on a fresh SQLite file and a free port; resolves once it logs its address. */
async function startServer() {
  const child = spawn(serverBinary(), ["serve"], {
    env: {
      ...process.env,
      DATABASE_URL: `sqlite://${join(scratch, "todoql.db")}`,
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
  };
  let log = "";
  child.stderr.setEncoding("utf8");
  try {
    const port = await new Promise((ready, fail) => {
      const timer = setTimeout(() => fail(new Error(`todoql did not start within 20 s:\n${log}`)), 20_000);
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
    // Keep the last lines of the log for failure messages; never block on a full pipe.
    child.stderr.removeAllListeners("data");
    child.stderr.on("data", (chunk) => {
      log = (log + chunk).slice(-20_000);
    });
    const origin = `http://127.0.0.1:${port}`;
    return { origin, url: `${origin}/graphql`, child, log: () => log, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** Stops the browser and the server, removes the scratch folder. Runs once, however often called. */
let cleaning;
function cleanUp() {
  cleaning ??= (async () => {
    if (browser) await browser.close().catch(() => {});
    if (server) await server.stop().catch(() => {});
    rmSync(scratch, { recursive: true, force: true, maxRetries: 5 });
  })();
  return cleaning;
}

// The whole run is bounded: past TOTAL_MS, stop everything and fail.
const watchdog = setTimeout(() => {
  console.error(`\nbrowser test: FAILED: still running after ${TOTAL_MS / 1000} s, giving up`);
  const hardExit = setTimeout(() => process.exit(1), 10_000);
  hardExit.unref();
  cleanUp().finally(() => process.exit(1));
}, TOTAL_MS);
watchdog.unref();
process.on("exit", () => {
  // Last resort: never leave a server behind.
  if (server && server.child.exitCode === null && server.child.signalCode === null) server.child.kill("SIGKILL");
});

// What the page asked for, checked at the end and on the way.
const requests = []; // { method, url }
const sockets = []; // ws URLs
const badResponses = []; // "STATUS METHOD URL"
const failedRequests = []; // "METHOD URL: reason"
const pageErrors = []; // uncaught exceptions in the page
const consoleErrors = []; // console.error messages

/** A request is local only when it goes to the server's own origin (http or ws). */
function isLocal(url) {
  if (/^(data|blob|about):/.test(url)) return true;
  const u = new URL(url);
  return u.hostname === "127.0.0.1" && u.host === new URL(server.origin).host && /^(http|ws):$/.test(u.protocol);
}

function foreignRequests() {
  return [...requests.map((r) => r.url), ...sockets].filter((url) => !isLocal(url));
}

before(
  async () => {
    server = await startServer();
    browser = await chromium.launch({
      executablePath: chromiumBinary(),
      // Exactly these flags: Playwright's own defaults are left out on purpose.
      ignoreDefaultArgs: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        `--user-data-dir=${join(scratch, "chromium-profile")}`,
        "--remote-debugging-pipe", // how Playwright talks to the browser
        "--no-startup-window",
      ],
      timeout: 20_000,
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 });
    // Record every request; refuse (and so report) any that would leave the server's origin.
    await context.route("**/*", (route) => {
      const url = route.request().url();
      return isLocal(url) ? route.continue() : route.abort("blockedbyclient");
    });
    context.on("request", (request) => requests.push({ method: request.method(), url: request.url() }));
    context.on("requestfailed", (request) =>
      failedRequests.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText}`),
    );
    context.on("response", (response) => {
      if (response.status() >= 400) {
        badResponses.push(`${response.status()} ${response.request().method()} ${response.url()}`);
      }
    });
    page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on("websocket", (socket) => sockets.push(socket.url()));
    page.on("pageerror", (error) => pageErrors.push(String(error)));
    page.on("console", (message) => {
      if (message.type() === "error") consoleErrors.push(message.text());
    });
  },
  { timeout: 45_000 },
);

after(async () => {
  if (failed && page) {
    mkdirSync(screenshotDir, { recursive: true });
    await page.screenshot({ path: join(screenshotDir, "failure.png") }).catch(() => {});
    console.error(`browser test: screenshot of the failure: ${join(screenshotDir, "failure.png")}`);
    if (server) console.error(`browser test: last lines of the server's log:\n${server.log().slice(-3_000)}`);
  }
  await cleanUp();
});

// Steps run in order and share the page: once one fails, the rest are skipped.
let failed = false;
function step(name, fn) {
  test(name, { timeout: STEP_MS }, async (t) => {
    if (failed) return t.skip("an earlier step failed");
    try {
      await fn(t);
    } catch (error) {
      failed = true;
      throw error;
    }
  });
}

const queryEditor = () => page.locator(".graphiql-query-editor .CodeMirror");
const headersEditor = () =>
  page.locator('section.graphiql-editor-tool[aria-label="Headers"] .graphiql-editor:not(.hidden) .CodeMirror');
const runButton = () => page.getByRole("button", { name: /^Execute query/ });

/** Replaces an editor's text as a person pasting would, then checks what the editor holds. */
async function replaceText(editor, text) {
  await editor.click();
  await page.keyboard.press("ControlOrMeta+A");
  await page.keyboard.press("Delete");
  await page.keyboard.insertText(text);
  const value = await editor.evaluate((element) => element.CodeMirror.getValue());
  assert.equal(value, text, "the editor does not hold the text that was pasted into it");
}

/**
 * The result pane's text as rendered (CodeMirror's lines), not the editor's
 * model. CodeMirror draws indentation with no-break spaces and empty lines
 * with a zero-width space: both are read back as what they stand for.
 */
function renderedResult() {
  return page
    .locator("section.result-window .CodeMirror-line")
    .evaluateAll((lines) => lines.map((line) => line.textContent.replace(/\u200b/g, "").replace(/\u00a0/g, " ")).join("\n"));
}

/** Waits until the rendered result parses as JSON and satisfies `done`; returns it. */
async function waitForResult(what, done) {
  const until = Date.now() + 15_000;
  let text = "";
  while (Date.now() < until) {
    text = await renderedResult();
    try {
      const json = JSON.parse(text);
      if (done(json)) return { text, json };
    } catch {
      // still rendering, or not there yet
    }
    await page.waitForTimeout(100);
  }
  throw new Error(`the result pane never showed ${what}; it shows:\n${text || "(nothing)"}`);
}

/** The `query` of a GraphQL POST, or undefined. */
function sentQuery(request) {
  try {
    return request.postDataJSON()?.query;
  } catch {
    return undefined;
  }
}

/** Clicks Run and waits for the POST /graphql that carries `query`; returns that request. */
async function run(query) {
  const sent = page.waitForRequest(
    (request) => request.method() === "POST" && request.url() === server.url && sentQuery(request) === query,
  );
  await runButton().click();
  const request = await sent;
  const response = await request.response();
  assert.ok(response, `no response to ${query}`);
  assert.equal(response.status(), 200, `${query} answered ${response.status()}`);
  return request;
}

/** Screenshots the page with the mouse parked on an empty spot (no hover effects). */
async function snapshot(name) {
  await page.mouse.move(1200, 780);
  mkdirSync(screenshotDir, { recursive: true });
  await page.screenshot({ path: join(screenshotDir, name) });
}

let token;

step("GraphiQL renders from the server's own origin and loads the schema", async () => {
  const introspected = page.waitForResponse(
    (response) => response.request().method() === "POST" && /IntrospectionQuery/.test(response.request().postData() ?? ""),
  );
  const response = await page.goto(server.url);
  assert.equal(response.status(), 200, `GET /graphql answered ${response.status()}`);
  assert.match(response.headers()["content-type"], /^text\/html/);
  assert.equal(await page.title(), "todoql — GraphiQL");
  await queryEditor().waitFor();
  await runButton().waitFor();
  await headersEditor().waitFor();
  assert.equal((await introspected).status(), 200, "the introspection query failed");
  const headers = await headersEditor().evaluate((element) => element.CodeMirror.getValue());
  assert.match(headers, /"Authorization":\s*"Bearer "/, "the Headers editor is not prefilled");
  for (const asset of ["graphiql.min.css", "react.production.min.js", "react-dom.production.min.js", "graphiql.min.js"]) {
    assert.ok(
      requests.some((r) => new URL(r.url).pathname === `/graphiql/${asset}`),
      `the page did not load /graphiql/${asset}`,
    );
  }
  assert.deepEqual(foreignRequests(), [], "the page asked for something outside 127.0.0.1");
  assert.deepEqual(badResponses, [], "some requests failed");
});

step("signup typed in the query editor and run with the Run button shows the token", async () => {
  await replaceText(queryEditor(), SIGNUP);
  const request = await run(SIGNUP);
  // The page drops the prefilled, empty "Bearer " instead of sending it.
  assert.equal(request.headers().authorization, undefined, "signup was sent with an Authorization header");
  const { text, json } = await waitForResult(`${EMAIL} and a token`, (r) => r?.data?.signup?.token !== undefined);
  assert.ok(text.includes(EMAIL), `the result pane does not show ${EMAIL}:\n${text}`);
  assert.ok(text.includes('"token"'), `the result pane does not show a token:\n${text}`);
  assert.equal(json.errors, undefined, `signup returned errors:\n${text}`);
  assert.equal(json.data.signup.user.email, EMAIL);
  token = json.data.signup.token;
  assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, "the token is not a JWT");
  await snapshot("graphiql.png");
});

step("the token pasted into the Headers editor authenticates `me`", async () => {
  await replaceText(headersEditor(), `{\n  "Authorization": "Bearer ${token}"\n}`);
  await replaceText(queryEditor(), ME);
  const request = await run(ME);
  assert.equal(request.headers().authorization, `Bearer ${token}`, "me was not sent with the token");
  const { text, json } = await waitForResult(`me { email: ${EMAIL} }`, (r) => r?.data?.me !== undefined);
  assert.equal(json.errors, undefined, `me returned errors:\n${text}`);
  assert.equal(json.data.me.email, EMAIL);
  assert.ok(text.includes(EMAIL), `the result pane does not show ${EMAIL}:\n${text}`);
  await snapshot("graphiql-me.png");
});

step("no request left 127.0.0.1 and the page raised no error", async () => {
  assert.ok(requests.length >= 7, `only ${requests.length} requests recorded`);
  assert.deepEqual(foreignRequests(), [], "the page asked for something outside 127.0.0.1");
  assert.deepEqual(failedRequests, [], "some requests failed");
  assert.deepEqual(badResponses, [], "some requests failed");
  assert.deepEqual(pageErrors, [], "the page threw");
  assert.deepEqual(consoleErrors, [], "the page logged errors");
  const paths = [...new Set(requests.map((r) => `${r.method} ${new URL(r.url).pathname}`))];
  console.log(`# ${requests.length} requests, all to ${server.origin}: ${paths.join(", ")}`);
});
