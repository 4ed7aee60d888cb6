-- Ids are lower-case hyphenated UUID text and instants fixed-width RFC 3339
-- text (see src/db/types.rs): both sort like PostgreSQL's native types.
CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    token_version INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE todos (
    id                 TEXT PRIMARY KEY NOT NULL,
    owner_id           TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title              TEXT NOT NULL,
    description        TEXT,
    completed          INTEGER NOT NULL DEFAULT 0 CHECK (completed IN (0, 1)),
    title_search       TEXT NOT NULL,
    description_search TEXT NOT NULL DEFAULT '',
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);
-- One index per orderBy field; see the PostgreSQL migration.
CREATE INDEX todos_owner_created_idx ON todos (owner_id, created_at, id);
CREATE INDEX todos_owner_updated_idx ON todos (owner_id, updated_at, id);
CREATE INDEX todos_owner_title_idx ON todos (owner_id, title, id);
