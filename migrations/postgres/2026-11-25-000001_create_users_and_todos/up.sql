CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL,
    password_hash text NOT NULL,
    token_version integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
-- The application lower-cases emails; the index on lower() keeps uniqueness
-- case-insensitive even for rows written by hand.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE UNIQUE INDEX users_email_exact_key ON users (email);

-- COLLATE "C" on text that is sorted or compared: byte order, exactly like
-- SQLite's BINARY collation, so both backends page through titles alike.
CREATE TABLE todos (
    id                 uuid PRIMARY KEY,
    owner_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title              text COLLATE "C" NOT NULL,
    description        text COLLATE "C",
    completed          boolean NOT NULL DEFAULT false,
    title_search       text COLLATE "C" NOT NULL,
    description_search text COLLATE "C" NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
-- One index per orderBy field: "this user's todos in this order" is an index
-- range scan (forwards or backwards) with no sort, and keyset cursors seek in it.
CREATE INDEX todos_owner_created_idx ON todos (owner_id, created_at, id);
CREATE INDEX todos_owner_updated_idx ON todos (owner_id, updated_at, id);
CREATE INDEX todos_owner_title_idx ON todos (owner_id, title, id);
