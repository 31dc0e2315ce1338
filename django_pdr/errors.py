"""Exceptions raised by django-pdr.  Messages say what to do, never a credential."""

#: Kinds of failed destination writes (``Dialect.classify_error``): DATA, the row itself
#: cannot be stored (it becomes a dead letter, the other rows flow); TRANSIENT, anything
#: else the database says (locks, outages, a read-only server, a missing table or column:
#: the batch is retried later with back-off, never dead-lettered).
DATA = "data"
TRANSIENT = "transient"


class PdrError(Exception):
    """Base class of every django-pdr error."""


class ConfigurationError(PdrError):
    """The configuration cannot work as written (fix it in the admin)."""


class ConnectionFailed(PdrError):
    """A configured database cannot be reached."""


class NameRefused(ConfigurationError):
    """A destination name the destination engine cannot hold; ``field`` is the Reflection
    field that gives it (destination_table, destination_schema or mapping)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class TableNotFound(ConfigurationError):
    """A source or destination table does not exist."""


class NoPrimaryKey(ConfigurationError):
    """A source table has no primary key, so changes cannot be matched to rows."""


class CaptureError(PdrError):
    """Installing or removing capture triggers failed; nothing was left half-installed."""


class CaptureMissing(PdrError):
    """The capture of a source table is missing or disabled: changes are not recorded."""


class CaptureOutdated(PdrError):
    """The installed capture differs from what this release would install (run pdr-install)."""


class ApplyError(PdrError):
    """A batch could not be applied to the destination."""


class ValueRefused(PdrError):
    """A value the destination engine cannot hold (a DATA error: the row becomes a dead
    letter whose message names the column and the reason)."""


class RowTooLarge(ValueRefused):
    """A row is too large for the destination to take in one statement (a DATA error:
    its message says which setting to raise)."""


def describe(exc: BaseException) -> str:
    """A one-line message for any error: ours verbatim, a driver's as 'Type: first line'.

    Never a traceback; library messages carry no credential."""
    if isinstance(exc, PdrError):
        return str(exc)
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return f"{type(orig or exc).__name__}: {text.splitlines()[0] if text else ''}"[:2000]
