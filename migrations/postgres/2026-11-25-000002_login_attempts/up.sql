-- Login attempts per rate-limit key, shared by every instance.
CREATE TABLE login_attempts (
    id  uuid PRIMARY KEY,
    key text NOT NULL,
    at  timestamptz NOT NULL
);
CREATE INDEX login_attempts_key_at_idx ON login_attempts (key, at);
CREATE INDEX login_attempts_at_idx ON login_attempts (at);
