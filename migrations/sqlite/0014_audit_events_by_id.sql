-- PostgreSQL's partitioning step (see migrations/postgres); nothing to do on SQLite.
SELECT 1;
