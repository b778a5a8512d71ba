"""The one error family users can cause. The CLI prints it as one line and exits with code 2."""


class SkdError(Exception):
    """Bad input, bad config, a missing model or file, a locked database: the user's to fix."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (DuckDB's run to many), for one-line errors."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class LockedError(SkdError):
    """Another process holds the database's write lock."""


class SchemaError(SkdError):
    """The database was written by a newer skd, or is not an skd database."""
