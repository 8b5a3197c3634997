"""Stats: schema (the vocabulary: what a request did and how each counter is named),
recorder (sums in memory, flushes to Redis), report (/stats windows and the /metrics
figures), prometheus (the text exposition), prices. Redis is reached only through
proxy.store.stats."""
