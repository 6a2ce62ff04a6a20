-- Products, a second cached table. Same rules as 0001_users.sql.
CREATE TABLE IF NOT EXISTS products (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents BIGINT NOT NULL
);
