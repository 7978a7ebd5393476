"""Plugin worker processes: the pool (main process side) and the worker entry point."""
