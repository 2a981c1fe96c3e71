"""The cronbox host: store, sweep, pool, runtimes, delivery, CLI and HTTP."""
