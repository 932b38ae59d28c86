-- The same rule as PostgreSQL's 0002: at most one user per letter-case
-- folding of a name. SQLite serialises writers, so its check could not race,
-- but the database now holds the rule itself, whatever writes the row.
CREATE UNIQUE INDEX IF NOT EXISTS users_username_folded ON users (lower(username));
