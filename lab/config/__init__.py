"""Configs: `schema` (the dataclasses, below the tasks) and `compose` (the store, composition and
checks, above the tasks)."""
