"""skd's version, written once: pyproject.toml reads it from here (a lookup in the installed metadata would
cost every command 60 ms of start-up)."""

VERSION = "0.1.0"
