"""Prefect tasks: thin wrappers over `transcoder` that add retries, caching, names and artifacts."""
