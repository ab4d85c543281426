-- Native types on PostgreSQL: ids become uuid, times timestamptz, the
-- collection schema jsonb (record data already is). It works on a database
-- made by the earlier migrations, whatever it holds: every stored id is a
-- UUID and every stored time RFC 3339 UTC text, as the application writes
-- them. Text that the audit chain hashes or the journal replays (actor and
-- target ids, the diff, the after-image) stays text, byte for byte: the
-- chain's canonical encoding reads times and ids back in the same text
-- (`clock::format`, lowercase hyphenated UUIDs).
--
-- Row-level-security policies and foreign keys name the columns whose
-- type changes, so they are dropped first and made again after. The ledger
-- of migrations keeps its text time: the statement that records this very
-- migration was prepared against it.

DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT tablename FROM pg_policies
             WHERE schemaname = current_schema() AND policyname = 'tenant_isolation'
    LOOP
        EXECUTE format('DROP POLICY tenant_isolation ON %I', r.tablename);
    END LOOP;
END
$$;

CREATE TEMPORARY TABLE strongroom_saved_fks ON COMMIT DROP AS
    SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def
    FROM pg_constraint
    WHERE contype = 'f' AND connamespace = current_schema()::regnamespace;

DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT * FROM strongroom_saved_fks LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
    END LOOP;
END
$$;

-- The trigger wrote its time as text; it writes a timestamptz now.
CREATE OR REPLACE FUNCTION files_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO file_tombstones (tenant_id, object_key, deleted_at)
    VALUES (OLD.tenant_id, OLD.object_key, now())
    ON CONFLICT DO NOTHING;
    RETURN OLD;
END
$$;

ALTER TABLE tenants
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN created_at TYPE timestamptz USING created_at::timestamptz,
    ALTER COLUMN updated_at TYPE timestamptz USING updated_at::timestamptz;
ALTER TABLE tenant_sequences
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid;
ALTER TABLE users
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN created_at TYPE timestamptz USING created_at::timestamptz,
    ALTER COLUMN updated_at TYPE timestamptz USING updated_at::timestamptz;
ALTER TABLE invitations
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN user_id TYPE uuid USING user_id::uuid,
    ALTER COLUMN expires_at TYPE timestamptz USING expires_at::timestamptz,
    ALTER COLUMN used_at TYPE timestamptz USING used_at::timestamptz,
    ALTER COLUMN created_at TYPE timestamptz USING created_at::timestamptz;
ALTER TABLE sessions
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN user_id TYPE uuid USING user_id::uuid,
    ALTER COLUMN created_at TYPE timestamptz USING created_at::timestamptz,
    ALTER COLUMN last_used_at TYPE timestamptz USING last_used_at::timestamptz,
    ALTER COLUMN expires_at TYPE timestamptz USING expires_at::timestamptz,
    ALTER COLUMN revoked_at TYPE timestamptz USING revoked_at::timestamptz;
ALTER TABLE refresh_tokens
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN session_id TYPE uuid USING session_id::uuid,
    ALTER COLUMN created_at TYPE timestamptz USING created_at::timestamptz,
    ALTER COLUMN used_at TYPE timestamptz USING used_at::timestamptz;
ALTER TABLE collections
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN fields TYPE jsonb USING fields::jsonb,
    ALTER COLUMN created_at TYPE timestamptz USING created_at::timestamptz,
    ALTER COLUMN updated_at TYPE timestamptz USING updated_at::timestamptz;
ALTER TABLE records
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN collection_id TYPE uuid USING collection_id::uuid,
    ALTER COLUMN created_at TYPE timestamptz USING created_at::timestamptz,
    ALTER COLUMN updated_at TYPE timestamptz USING updated_at::timestamptz;
ALTER TABLE record_keys
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN collection_id TYPE uuid USING collection_id::uuid,
    ALTER COLUMN record_id TYPE uuid USING record_id::uuid;
ALTER TABLE journal
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN occurred_at TYPE timestamptz USING occurred_at::timestamptz;
ALTER TABLE audit_events
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN occurred_at TYPE timestamptz USING occurred_at::timestamptz;
ALTER TABLE audit_checkpoints
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN signed_at TYPE timestamptz USING signed_at::timestamptz;
ALTER TABLE tenant_settings
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN updated_at TYPE timestamptz USING updated_at::timestamptz;
ALTER TABLE access_log
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN occurred_at TYPE timestamptz USING occurred_at::timestamptz;
ALTER TABLE job_heartbeats
    ALTER COLUMN last_run_at TYPE timestamptz USING last_run_at::timestamptz;
ALTER TABLE tenant_keys
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN created_at TYPE timestamptz USING created_at::timestamptz;
ALTER TABLE tenant_byok
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN created_at TYPE timestamptz USING created_at::timestamptz;
ALTER TABLE key_rotations
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN started_at TYPE timestamptz USING started_at::timestamptz,
    ALTER COLUMN finished_at TYPE timestamptz USING finished_at::timestamptz;
ALTER TABLE files
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN collection_id TYPE uuid USING collection_id::uuid,
    ALTER COLUMN record_id TYPE uuid USING record_id::uuid,
    ALTER COLUMN created_at TYPE timestamptz USING created_at::timestamptz;
ALTER TABLE file_tombstones
    ALTER COLUMN tenant_id TYPE uuid USING tenant_id::uuid,
    ALTER COLUMN deleted_at TYPE timestamptz USING deleted_at::timestamptz;

DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT * FROM strongroom_saved_fks LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', r.tbl, r.conname, r.def);
    END LOOP;
END
$$;

-- TEN-2 again, on uuid: an unset app.tenant_id reads as '' or NULL, both
-- of which match no row.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_sequences','users','invitations','sessions',
        'refresh_tokens','collections','records','record_keys','journal','audit_events',
        'audit_checkpoints','tenant_settings','tenant_keys','tenant_byok','key_rotations',
        'files','file_tombstones']
    LOOP
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
CREATE POLICY tenant_isolation ON access_log
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id IS NULL
        OR tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
