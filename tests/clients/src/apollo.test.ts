// Apollo Client (core, no React) and graphql-request against a real todoql.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ApolloClient, ApolloLink, HttpLink, InMemoryCache } from "@apollo/client";
import { CombinedGraphQLErrors } from "@apollo/client/errors";
import { SetContextLink } from "@apollo/client/link/context";
import { GraphQLClient } from "graphql-request";

import {
  CreateTodoDocument,
  DeleteTodoDocument,
  LoginDocument,
  MeDocument,
  SignupDocument,
  TodoFieldsFragmentDoc,
  TodosPageDocument,
  UpdateTodoDocument,
} from "./generated/graphql.js";
import { startServer, type RunningServer } from "./server.js";

// Apollo Client 4.1+ "modern" signatures: with the default errorPolicy "none",
// a resolved result's `data` is typed as present (an error rejects instead).
declare module "@apollo/client" {
  export interface TypeOverrides {
    signatureStyle: "modern";
  }
}

let server: RunningServer;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

/** An Apollo client whose auth link adds `Authorization: Bearer` when it has a token. */
function apollo(getToken: () => string | undefined) {
  const requests = { count: 0 };
  const http = new HttpLink({
    uri: server.url,
    fetch: (input, init) => {
      requests.count += 1;
      return fetch(input, init);
    },
  });
  const auth = new SetContextLink((prevContext) => {
    const token = getToken();
    return token ? { headers: { ...prevContext.headers, authorization: `Bearer ${token}` } } : {};
  });
  const client = new ApolloClient({ link: ApolloLink.from([auth, http]), cache: new InMemoryCache() });
  return { client, requests };
}

/** The first GraphQL error of an Apollo rejection, checked to be one. */
function graphQLError(error: unknown) {
  assert.ok(CombinedGraphQLErrors.is(error), `expected GraphQL errors, got ${String(error)}`);
  const [first] = error.errors;
  assert.ok(first);
  return first;
}

const password = "correct horse battery staple";

test("signup, CRUD, and the normalised cache", { timeout: 30_000 }, async () => {
  let token: string | undefined;
  const { client, requests } = apollo(() => token);
  const email = `apollo-${Date.now()}@example.com`;

  const signup = await client.mutate({ mutation: SignupDocument, variables: { input: { email, password } } });
  token = signup.data.signup.token;
  assert.equal(signup.data.signup.user.email, email);
  assert.ok(Date.parse(signup.data.signup.expiresAt) > Date.now());

  const me = await client.query({ query: MeDocument });
  assert.equal(me.data.me.id, signup.data.signup.user.id);

  const created = [];
  for (const [i, title] of ["buy milk", "write tests", "ship it"].entries()) {
    const { data } = await client.mutate({
      mutation: CreateTodoDocument,
      variables: { input: { title, description: `#${i}`, completed: false } },
    });
    created.push(data.createTodo);
  }
  assert.deepEqual(
    created.map((todo) => [todo.title, todo.completed]),
    [
      ["buy milk", false],
      ["write tests", false],
      ["ship it", false],
    ],
  );

  const variables = { first: 10, orderBy: { field: "CREATED_AT", direction: "ASC" } } as const;
  const page = await client.query({ query: TodosPageDocument, variables });
  assert.equal(page.data.todos.totalCount, 3);
  assert.deepEqual(
    page.data.todos.edges.map((edge) => edge.node.id),
    created.map((todo) => todo.id),
  );
  assert.equal(page.data.todos.pageInfo.hasNextPage, false);

  // Update the second todo: the mutation result is merged into Todo:<id>, so the
  // list that was cached earlier shows the change without another request.
  const target = created[1]!;
  const updated = await client.mutate({
    mutation: UpdateTodoDocument,
    variables: { id: target.id, input: { title: "write more tests", completed: true } },
  });
  assert.equal(updated.data.updateTodo.id, target.id);
  assert.equal(updated.data.updateTodo.description, "#1", "an absent field is left as it is");
  const requestsAfterUpdate = requests.count;

  const cacheId = client.cache.identify({ __typename: "Todo", id: target.id });
  assert.equal(cacheId, `Todo:${target.id}`);
  const fragment = client.cache.readFragment({ id: cacheId, fragment: TodoFieldsFragmentDoc });
  assert.equal(fragment?.title, "write more tests");
  assert.equal(fragment?.completed, true);

  const cachedPage = client.readQuery({ query: TodosPageDocument, variables });
  const cachedItem = cachedPage?.todos.edges.find((edge) => edge.node.id === target.id)?.node;
  assert.equal(cachedItem?.title, "write more tests");
  assert.equal(cachedItem?.completed, true);
  const fromCacheOnly = await client.query({ query: TodosPageDocument, variables, fetchPolicy: "cache-only" });
  assert.equal(fromCacheOnly.data.todos.edges[1]?.node.title, "write more tests");
  assert.equal(requests.count, requestsAfterUpdate, "no request was sent to read the update");

  // Delete the first todo: deleteTodo returns only an id, so the client drops the
  // edge from the cached page and evicts Todo:<id> itself.
  const deleted = await client.mutate({
    mutation: DeleteTodoDocument,
    variables: { id: created[0]!.id },
    update(cache, { data }) {
      if (!data) return;
      cache.updateQuery({ query: TodosPageDocument, variables }, (cached) =>
        cached
          ? {
              todos: {
                ...cached.todos,
                totalCount: cached.todos.totalCount - 1,
                edges: cached.todos.edges.filter((edge) => edge.node.id !== data.deleteTodo),
              },
            }
          : undefined,
      );
      cache.evict({ id: cache.identify({ __typename: "Todo", id: data.deleteTodo }) });
    },
  });
  assert.equal(deleted.data.deleteTodo, created[0]!.id);
  const afterDelete = client.readQuery({ query: TodosPageDocument, variables });
  assert.equal(afterDelete?.todos.totalCount, 2);
  assert.deepEqual(
    afterDelete?.todos.edges.map((edge) => edge.node.id),
    [created[1]!.id, created[2]!.id],
  );
  assert.equal(client.cache.readFragment({ id: cacheId, fragment: TodoFieldsFragmentDoc })?.id, target.id);
  const deletedId = client.cache.identify({ __typename: "Todo", id: created[0]!.id });
  assert.equal(client.cache.readFragment({ id: deletedId, fragment: TodoFieldsFragmentDoc }), null);
  const fresh = await client.query({ query: TodosPageDocument, variables, fetchPolicy: "network-only" });
  assert.equal(fresh.data.todos.totalCount, 2);
  assert.deepEqual(
    fresh.data.todos.edges.map((edge) => edge.node.id),
    [created[1]!.id, created[2]!.id],
  );
});

test("me without a token is UNAUTHENTICATED", { timeout: 30_000 }, async () => {
  const { client } = apollo(() => undefined);
  await assert.rejects(client.query({ query: MeDocument }), (error) => {
    assert.equal(graphQLError(error).extensions?.code, "UNAUTHENTICATED");
    return true;
  });
});

test("createTodo with an empty title is BAD_USER_INPUT on field title", { timeout: 30_000 }, async () => {
  let token: string | undefined;
  const { client } = apollo(() => token);
  const signup = await client.mutate({
    mutation: SignupDocument,
    variables: { input: { email: `empty-title-${Date.now()}@example.com`, password } },
  });
  token = signup.data.signup.token;

  await assert.rejects(
    client.mutate({ mutation: CreateTodoDocument, variables: { input: { title: "" } } }),
    (error) => {
      const first = graphQLError(error);
      assert.equal(first.extensions?.code, "BAD_USER_INPUT");
      assert.equal(first.extensions?.field, "title");
      return true;
    },
  );
});

test("graphql-request: login, then me with the token", { timeout: 30_000 }, async () => {
  const email = `request-${Date.now()}@example.com`;
  const anonymous = new GraphQLClient(server.url);
  await anonymous.request(SignupDocument, { input: { email, password } });
  const { login } = await anonymous.request(LoginDocument, { input: { email, password } });

  const authed = new GraphQLClient(server.url, { headers: { authorization: `Bearer ${login.token}` } });
  const { me } = await authed.request(MeDocument);
  assert.equal(me.email, email);
  assert.equal(me.id, login.user.id);
});
