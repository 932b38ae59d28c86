-- `store::users::insert` refuses a name that differs from an existing one
-- only in letter case (a look-alike account), but its check and insert are
-- one statement that two transactions can run side by side under READ
-- COMMITTED: both see no match and both insert. This index makes the
-- database refuse the second (a unique violation, answered 409).
CREATE UNIQUE INDEX IF NOT EXISTS users_username_folded ON users (lower(username));
