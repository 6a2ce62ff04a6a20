-- User profiles, the article's example. Plain SQL that SQLite and PostgreSQL
-- both accept; run at every start-up, so it must be idempotent.
CREATE TABLE IF NOT EXISTS users (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    avatar TEXT NOT NULL
);
