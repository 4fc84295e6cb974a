-- A PostgreSQL role for `jobstream api` that can read the read models and nothing else.
--
--   psql "$OWNER_URL" -v role=jobstream_api -v password="$API_PASSWORD" \
--        -v schema=jobstream -v owner=jobstream -f infra/postgres/api-read-only-role.sql
--
-- role      the API's login role (created if missing; its password is set either way)
-- password  its password
-- schema    the read-model schema (`--schema`, JOBSTREAM_SCHEMA; default jobstream)
-- owner     the role that runs `jobstream init` and the projector, and so owns the tables
--
-- Run it as that owner (or a superuser), after `jobstream init`; running it again is safe.
-- Then give the API `postgresql://jobstream_api:...@host/db` (JOBSTREAM_DATABASE_URL of the
-- API only). The role has SELECT on the schema's tables and USAGE on the schema, nothing
-- else: no INSERT, UPDATE, DELETE, TRUNCATE, CREATE. Tables and schemas the owner creates
-- later are readable too (default privileges), which covers new migrations and
-- `jobstream replay --target postgres`, whose rebuilt schema is renamed into place.
-- The API also opens its transactions read-only (default_transaction_read_only); the role
-- is what makes that a guarantee. Checked by tests/integration/test_api_read_only_role.py.

\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec

ALTER ROLE :"role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'password';
ALTER ROLE :"role" SET default_transaction_read_only = on;

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'role') \gexec
GRANT USAGE ON SCHEMA :"schema" TO :"role";
GRANT SELECT ON ALL TABLES IN SCHEMA :"schema" TO :"role";

-- What the owner creates from now on, in any schema (a replay builds a fresh one).
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" GRANT USAGE ON SCHEMAS TO :"role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" GRANT SELECT ON TABLES TO :"role";
