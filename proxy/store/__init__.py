"""Where rollout state lives: a file (the embedded default, file.py), or Redis (fleet mode,
redis_store.py); opener.py picks one from the config. The records both hold are in records.py.

This package's own module imports nothing: the compiled data plane imports records.py, and
must not reach the optional Redis client through it.
"""
