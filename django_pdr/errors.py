"""Exceptions raised by django-pdr.  Messages say what to do, never a credential."""


class PdrError(Exception):
    """Base class of every django-pdr error."""


class ConfigurationError(PdrError):
    """The configuration cannot work as written (fix it in the admin)."""


class ConnectionFailed(PdrError):
    """A configured database cannot be reached."""


class TableNotFound(ConfigurationError):
    """A source or destination table does not exist."""


class NoPrimaryKey(ConfigurationError):
    """A source table has no primary key, so changes cannot be matched to rows."""


class CaptureError(PdrError):
    """Installing or removing capture triggers failed; nothing was left half-installed."""


class ApplyError(PdrError):
    """A batch could not be applied to the destination."""


def describe(exc: BaseException) -> str:
    """A one-line message for any error: ours verbatim, a driver's as 'Type: first line'.

    Never a traceback; library messages carry no credential."""
    if isinstance(exc, PdrError):
        return str(exc)
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return f"{type(orig or exc).__name__}: {text.splitlines()[0] if text else ''}"[:2000]
