-- Login attempts per rate-limit key.
CREATE TABLE login_attempts (
    id  TEXT PRIMARY KEY NOT NULL,
    key TEXT NOT NULL,
    at  TEXT NOT NULL
);
CREATE INDEX login_attempts_key_at_idx ON login_attempts (key, at);
CREATE INDEX login_attempts_at_idx ON login_attempts (at);
