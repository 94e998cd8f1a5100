-- The canonical source schema amojo-etl reads with no configuration (see DESIGN.md, "Data model").
-- Ids are text so that integers and UUIDs both fit. VARCHAR(255) rather than TEXT for keys because MySQL/MariaDB
-- cannot index an unbounded TEXT column; SQLite and PostgreSQL treat both alike.
-- Timestamps are naive and read in AMOJO_ETL_SOURCE_TIMEZONE.

CREATE TABLE clients (
    id          VARCHAR(255) PRIMARY KEY,
    name        TEXT NOT NULL,
    phone       TEXT,
    email       TEXT,
    avatar_url  TEXT,
    profile_url TEXT
);

CREATE TABLE managers (
    id    VARCHAR(255) PRIMARY KEY,
    name  TEXT NOT NULL,
    email TEXT
);

CREATE TABLE conversations (
    id         VARCHAR(255) PRIMARY KEY,
    client_id  VARCHAR(255) NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE messages (
    id              VARCHAR(255) PRIMARY KEY,
    conversation_id VARCHAR(255) NOT NULL,
    created_at      TIMESTAMP NOT NULL,
    updated_at      TIMESTAMP NULL,
    direction       VARCHAR(8) NOT NULL,             -- 'in' from the client, 'out' from a manager
    manager_id      VARCHAR(255),                    -- for 'out'; NULL = unknown manager (sent as the channel bot)
    type            VARCHAR(16) NOT NULL DEFAULT 'text', -- text|picture|video|file|voice|audio|sticker|location|contact
    text            TEXT,
    media_url       TEXT,
    file_name       TEXT,
    file_size       BIGINT,
    lat             DOUBLE PRECISION,
    lon             DOUBLE PRECISION,
    contact_name    TEXT,
    contact_phone   TEXT,
    reply_to_id     VARCHAR(255)                     -- the id of the message this one answers, if any
);

-- A message's attachments, each sent as its own amoCRM message right after the message's text, in id order.
CREATE TABLE attachments (
    message_id    VARCHAR(255) NOT NULL,
    id            VARCHAR(255) NOT NULL,
    type          VARCHAR(16) NOT NULL,               -- picture|video|file|voice|audio|sticker|location|contact
    media_url     TEXT,
    file_name     TEXT,
    file_size     BIGINT,
    duration      INTEGER,                            -- seconds, for video, audio and voice
    lat           DOUBLE PRECISION,
    lon           DOUBLE PRECISION,
    contact_name  TEXT,
    contact_phone TEXT,
    PRIMARY KEY (message_id, id)
);

CREATE INDEX messages_created_at ON messages (created_at);
CREATE INDEX messages_conversation ON messages (conversation_id, created_at);
