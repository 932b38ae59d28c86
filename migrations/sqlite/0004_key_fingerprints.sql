-- One row per encryption key id any instance has used with this database:
-- the key's fingerprint (data::keyring, SHA-256 of a label and the key).
-- Instances sharing a database must share the keyring; one that generated
-- its own `k1` wrote rows no other instance could read (probe I: every
-- list answered 500). A start whose keyring holds a different key under a
-- registered id is refused.
CREATE TABLE IF NOT EXISTS key_fingerprints (
    key_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
