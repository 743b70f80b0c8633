-- no-transaction
-- EraseCustomer finds a buyer's payments by the uid given at checkout (a few rows of millions).
CREATE INDEX CONCURRENTLY IF NOT EXISTS payments_by_customer ON payments (customer_uid);
