"""Persistence specifics: the PostgreSQL recorder, the hash-chained mapper, transcodings, bulk reads and the
store gate. The application layer uses them; the domain never does."""
