"""The proxy worker process (one per core under supervisord)."""
