-- An example of a source that is not in the canonical shape: a helpdesk's tickets.
-- helpdesk_mapping.toml maps it onto amojo-etl's entities. (SQLite and PostgreSQL syntax.)

CREATE TABLE customers (customer_uuid VARCHAR(36) PRIMARY KEY, full_name TEXT, mobile TEXT, mail TEXT);
CREATE TABLE agents (agent_id INTEGER PRIMARY KEY, display_name TEXT NOT NULL, work_email TEXT);
CREATE TABLE tickets (ticket_no INTEGER PRIMARY KEY, customer_uuid VARCHAR(36) NOT NULL, opened_at TIMESTAMP NOT NULL);
CREATE TABLE ticket_messages (
    msg_id           INTEGER PRIMARY KEY,
    ticket_no        INTEGER NOT NULL,
    sent_at          TIMESTAMP NOT NULL,
    edited_at        TIMESTAMP,
    author_kind      VARCHAR(8) NOT NULL,   -- 'customer' or 'agent'
    agent_id         INTEGER,
    body             TEXT,
    attachment_url   TEXT,
    attachment_name  TEXT,
    attachment_bytes BIGINT
);
CREATE INDEX ticket_messages_sent_at ON ticket_messages (sent_at);
