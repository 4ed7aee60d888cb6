// graphql-ws (graphql-transport-ws over the `ws` package) against a real todoql.
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, test } from "node:test";

import { print } from "graphql";
import { GraphQLClient } from "graphql-request";
import { createClient, type Client, type EventListener } from "graphql-ws";
import WebSocket from "ws";

import {
  CreateTodoDocument,
  DeleteTodoDocument,
  SignupDocument,
  TodoEventsDocument,
  UpdateTodoDocument,
  type TodoEventsSubscription,
} from "./generated/graphql.js";
import { startServer, type RunningServer } from "./server.js";

let server: RunningServer;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

function wsClient(
  token: string,
  on: { connected?: EventListener<"connected">; closed?: EventListener<"closed"> } = {},
): Client {
  return createClient({
    url: server.wsUrl,
    webSocketImpl: WebSocket,
    connectionParams: { Authorization: `Bearer ${token}` },
    retryAttempts: 0,
    on,
  });
}

type TodoEvent = TodoEventsSubscription["todoEvents"];

/** Waits until `check` holds, polling; false after `ms`. */
async function eventually(check: () => boolean, ms: number): Promise<boolean> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await sleep(10)) {
    if (check()) return true;
  }
  return check();
}

test("todoEvents: CREATED, UPDATED, DELETED arrive in order", { timeout: 30_000 }, async () => {
  const http = new GraphQLClient(server.url);
  const { signup } = await http.request(SignupDocument, {
    input: { email: `ws-${Date.now()}@example.com`, password: "correct horse battery staple" },
  });
  http.setHeader("authorization", `Bearer ${signup.token}`);

  const events: TodoEvent[] = [];
  let failure: unknown;
  let settle!: () => void;
  const acknowledgedOrFailed = new Promise<void>((resolve) => (settle = resolve));
  const ws = wsClient(signup.token, { connected: () => settle() });
  const unsubscribe = ws.subscribe<TodoEventsSubscription>(
    { query: print(TodoEventsDocument) },
    {
      next: (result) => {
        if (result.errors) failure = result.errors;
        else if (result.data) events.push(result.data.todoEvents);
      },
      error: (error) => {
        failure = error;
        settle();
      },
      complete: () => {},
    },
  );

  try {
    await acknowledgedOrFailed;
    assert.equal(failure, undefined);
    // connection_ack has come, but the protocol has no "subscribed" answer, so an
    // HTTP mutation sent now can still overtake the subscribe message. Create
    // warm-up todos until one's event comes through: then the stream is live.
    const warmUp = new Set<string>();
    let live = false;
    for (let attempt = 0; attempt < 20 && !live && !failure; attempt++) {
      const { createTodo } = await http.request(CreateTodoDocument, { input: { title: `warm-up ${attempt}` } });
      warmUp.add(createTodo.id);
      live = await eventually(() => events.some((event) => warmUp.has(event.todoId)), 250);
    }
    assert.equal(failure, undefined);
    assert.ok(live, "no event arrived for the warm-up todos");

    const { createTodo } = await http.request(CreateTodoDocument, { input: { title: "watched" } });
    await http.request(UpdateTodoDocument, { id: createTodo.id, input: { title: "watched, renamed", completed: true } });
    await http.request(DeleteTodoDocument, { id: createTodo.id });

    const ours = () => events.filter((event) => !warmUp.has(event.todoId));
    assert.ok(await eventually(() => ours().length >= 3, 5_000), `got ${JSON.stringify(ours())}`);
    assert.equal(failure, undefined);
    assert.deepEqual(ours(), [
      { kind: "CREATED", todoId: createTodo.id, todo: { id: createTodo.id, title: "watched", completed: false } },
      {
        kind: "UPDATED",
        todoId: createTodo.id,
        todo: { id: createTodo.id, title: "watched, renamed", completed: true },
      },
      { kind: "DELETED", todoId: createTodo.id, todo: null },
    ]);
  } finally {
    unsubscribe();
    await ws.dispose();
  }
});

test("a bad token in connection_init is refused with close code 4403", { timeout: 30_000 }, async () => {
  let closedWith: unknown;
  const ws = wsClient("not-a-jwt", { closed: (event) => (closedWith = event) });
  try {
    const error = await new Promise<unknown>((resolve, reject) => {
      ws.subscribe(
        { query: print(TodoEventsDocument) },
        {
          next: () => reject(new Error("got data on a refused connection")),
          error: resolve,
          complete: () => reject(new Error("completed instead of failing")),
        },
      );
    });
    assert.equal((error as { code?: unknown } | undefined)?.code, 4403, `sink.error got ${String(error)}`);
    assert.equal((closedWith as { code?: unknown } | undefined)?.code, 4403);
  } finally {
    await ws.dispose();
  }
});
