"""Core: package-wide I/O, hashing, locks, CPU facts and shared statistics; imports nothing else of fer_lib."""
