-- The demo's own tables (jobs and credits of a pretend DocExtract). Blocks start with "-- name: <name>".
-- Statements that schedule or expire take %(now)s: NULL means the database's
-- clock, a timestamp lets tests drive time instead of sleeping.
-- delivery_log.kind and outcome are enum types (see schema.sql). A quoted literal,
-- or a parameter used only there, is read as the enum; any other text (a column, a
-- CASE or VALUES of literals, a parameter also cast to text) needs a cast to be
-- compared with them, and gets one here where it is written too: a constant is then
-- converted once, not row by row.

-- name: demo_create_tables
-- The demo's stand-in for an application's own tables.
CREATE TABLE IF NOT EXISTS demo_job (id text PRIMARY KEY, org_id text NOT NULL, status text NOT NULL);
CREATE TABLE IF NOT EXISTS demo_credit (org_id text PRIMARY KEY, balance integer NOT NULL)

-- name: demo_save_job
INSERT INTO demo_job (id, org_id, status) VALUES (%(id)s, %(org_id)s, %(status)s)
ON CONFLICT (id) DO UPDATE SET status = excluded.status

-- name: demo_set_balance
INSERT INTO demo_credit (org_id, balance) VALUES (%(org_id)s, %(balance)s)
ON CONFLICT (org_id) DO UPDATE SET balance = excluded.balance

-- name: demo_debit_credits
-- Debit under the row lock, returning the balance before and after: what
-- outbox.publish_balance_change needs to see each threshold crossing exactly once.
UPDATE demo_credit SET balance = balance - %(amount)s WHERE org_id = %(org_id)s
RETURNING balance + %(amount)s, balance
