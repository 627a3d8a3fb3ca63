-- How far audit has read other services' streams (see kernel::offsets).
CREATE TABLE consumed (
    consumer TEXT NOT NULL,
    source TEXT NOT NULL,
    partition INTEGER NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (consumer, source, partition)
);
