-- Frenly schema (SQLite). Times are Unix milliseconds (BIGINT).
-- Encrypted columns hold "<key id>:<fernet token>" text.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL,
    password_hash TEXT,
    roles TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    tokens_valid_after BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    old_key_hash TEXT UNIQUE,
    old_valid_until BIGINT,
    permissions TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_used_at BIGINT
);
CREATE INDEX api_keys_user ON api_keys(user_id);

CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT,
    priority INTEGER NOT NULL,
    status TEXT NOT NULL,
    input TEXT,
    result TEXT,
    agent_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX tasks_owner ON tasks(owner_id, created_at, id);
CREATE INDEX tasks_queue ON tasks(status, priority, created_at, id);

CREATE TABLE agent_settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE bans (
    ip TEXT PRIMARY KEY,
    until_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    offences INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    ip TEXT,
    user_id TEXT,
    details TEXT NOT NULL,
    action TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX incidents_time ON incidents(created_at);

CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    request_id TEXT,
    ip TEXT,
    user_id TEXT,
    line TEXT NOT NULL
);
CREATE INDEX audit_type ON audit_events(event_type, ts_ms);
CREATE INDEX audit_time ON audit_events(ts_ms);
