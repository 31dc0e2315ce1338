"""Rows spelled as text by one engine for another, in one place.

PostgreSQL spells its rows as MySQL row literals (``values_query``), MySQL/MariaDB and
SQLite spell theirs as PostgreSQL COPY lines (``copy_query``, ``sqlite_copy_query``): the
text path between engines (see ``Dialect.copy_out``, ``docs/concepts.md``).  Each spelling is the
text the destination reads as exactly the value the Python path would write, or SQL NULL.
"""
from __future__ import annotations

import math

import sqlalchemy as sa

from .base import accepts


# -- PostgreSQL rows spelled as MySQL row literals ("values") ------------------------
# Each spelling gives the literal the Python path would send for the same value
# (PyMySQL's escaping of what psycopg2 reads), or SQL NULL for a NULL value.

def _quoted(expr):
    """A string value as a MySQL string literal (backslash escapes: the destination
    session is checked to read them so, see MySQLDialect.apply_marked)."""
    text = sa.func.replace(sa.func.replace(sa.cast(expr, sa.Text), "\\", "\\\\"), "'", "\\'")
    return sa.literal("'", sa.Text).concat(text).concat(sa.literal("'", sa.Text))


def _as_text(expr):
    return sa.cast(expr, sa.Text)


def _not_a_number(text):
    return sa.or_(*[text == spelled for spelled in ("NaN", "Infinity", "-Infinity")])


def _exact(expr):
    """A numeric as an exact-value literal (NULL, i.e. no literal, for NaN and infinities)."""
    text = sa.cast(expr, sa.Text)
    return sa.case((_not_a_number(text), sa.null()), else_=text)


def _approximate(expr):
    """A float as an approximate-value literal: "e0" appended when the text has no
    exponent, as PyMySQL spells floats (MySQL reads it as a DOUBLE, not a DECIMAL);
    NULL (no literal) for NaN and infinities, which PyMySQL refuses too."""
    text = sa.cast(expr, sa.Text)
    return sa.case((_not_a_number(text), sa.null()), (sa.func.strpos(text, "e") > 0, text),
                   else_=text.concat(sa.literal("e0", sa.Text)))


def _calendar(expr):
    """A date or timestamp as a quoted literal, NULL (no literal) outside years 1-9999
    and for infinity: the Python path's driver reads those otherwise (or not at all)."""
    text = sa.cast(expr, sa.Text)
    in_range = sa.and_(sa.func.isfinite(expr), sa.func.right(text, 3) != " BC",
                       sa.func.length(sa.func.split_part(text, "-", 1)) == 4)
    return sa.case((in_range, _quoted(expr)), else_=sa.null())


def _flag(expr):
    return sa.case((expr, sa.literal("1", sa.Text)), (sa.not_(expr), sa.literal("0", sa.Text)))


def values_spelling(source_type, dest_type=None):
    """How a PostgreSQL value of ``source_type`` is spelled as a MySQL literal (a function
    of the SQL expression), or None when the text path does not take it; with
    ``dest_type`` (a MySQL column type), None also when the pair is not exactly equal
    to what the Python path writes."""
    from sqlalchemy.dialects import mysql

    if isinstance(source_type, sa.ARRAY):
        return None
    if isinstance(source_type, sa.Boolean):
        return _flag if accepts(dest_type, sa.Integer, sa.Boolean) else None
    if isinstance(source_type, sa.Integer):
        return _as_text if accepts(dest_type, sa.Integer, never=(sa.Boolean,)) else None
    if isinstance(source_type, sa.Float):
        return _approximate if accepts(dest_type, sa.Float) else None
    if isinstance(source_type, sa.Numeric):
        return _exact if accepts(dest_type, sa.Numeric, never=(sa.Float,)) else None
    if isinstance(source_type, sa.DateTime):
        # timestamps without a zone only: an aware value is converted on the Python path
        if source_type.timezone:
            return None
        return _calendar if accepts(dest_type, sa.DateTime) else None
    if isinstance(source_type, sa.Date):
        return _calendar if accepts(dest_type, sa.Date, never=(sa.DateTime,)) else None
    if isinstance(source_type, sa.String) and not isinstance(source_type, (sa.CHAR, sa.JSON)):
        # (character(n) reads back padded on the Python path, but casts to text unpadded)
        return _quoted if accepts(dest_type, sa.String, never=(sa.Enum, mysql.SET)) else None
    return None


def values_query(query):
    """``query`` (labelled columns: see Dialect.copy_out) as one MySQL literal per row:
    "(v1,v2,...)"; with a "pdr_gone" flag, (flag, "(k1,k2,...)" for a gone key, else the
    row literal)."""
    rows = query.subquery("pdr_q")
    gone = rows.c.get("pdr_gone")
    values = [c for c in rows.c if c.name != "pdr_gone"]

    def literal(column):
        spell = values_spelling(column.type)
        if spell is None:
            raise NotImplementedError(f"no MySQL literal for PostgreSQL type {column.type!r}")
        # NULL only for a NULL value: a value without a literal leaves the whole row NULL
        # ("||" propagates it), and copy_out refuses the batch
        return sa.case((column.is_(None), sa.literal("NULL", sa.Text)), else_=spell(column))

    def row(columns):
        text = sa.literal("(", sa.Text)
        for position, column in enumerate(columns):
            if position:
                text = text.concat(sa.literal(",", sa.Text))
            text = text.concat(literal(column))
        return text.concat(sa.literal(")", sa.Text))

    if gone is None:
        return sa.select(row(values))
    keys = sorted((c for c in values if c.name.startswith("pdr_k")), key=lambda c: int(c.name[5:]))
    return sa.select(gone, sa.case((gone, row(keys)), else_=row(values)))


# -- MySQL rows spelled as PostgreSQL COPY text ("copy") -------------------------------
# Each spelling gives the text PostgreSQL reads as the value the Python path would write
# (what PyMySQL reads, converted and sent by psycopg2), or SQL NULL for a NULL value.

def _copy_escaped(expr):
    """A string in COPY's text form: backslash, newline, carriage return and tab escaped;
    as the bytes of its utf8mb4 form, whatever the column's character set."""
    from sqlalchemy.dialects import mysql

    # REGEXP_REPLACE on bytes: MariaDB's REPLACE takes time quadratic in the number of
    # replacements (100,000 backslashes: 1.4 s; 400,000: 23 s), and so does REGEXP_REPLACE
    # on a utf8mb4 string (160,000: 11 s); on bytes it is linear (9,000,000: 1 s).  No
    # byte of a multi-byte UTF-8 character is an ASCII byte, so bytes are safe here.
    # Patterns and replacements are in regular-expression syntax: "\\\\" is one backslash.
    text = sa.cast(sa.cast(expr, mysql.CHAR(charset="utf8mb4")), sa.LargeBinary)
    for pattern, escaped in (("\\\\", "\\\\\\\\"), ("\\n", "\\\\n"), ("\\r", "\\\\r"), ("\\t", "\\\\t")):
        text = sa.func.regexp_replace(text, pattern, escaped)
    return text


def _copy_plain(expr):
    return sa.cast(expr, sa.String)


def _copy_flag(expr):
    return sa.case((expr, "t"), (sa.not_(expr), "f"))


def copy_spelling(source_type, dest_type=None):
    """How a MySQL value of ``source_type`` is spelled in COPY text (a function of the SQL
    expression), or None when the text path does not take it; with ``dest_type`` (a
    PostgreSQL column type), None also when the pair is not exactly equal to what the
    Python path writes."""
    from sqlalchemy.dialects import mysql

    if isinstance(source_type, sa.Boolean):
        return _copy_flag if accepts(dest_type, sa.Boolean) else None
    if isinstance(source_type, sa.Integer) and not isinstance(source_type, mysql.BIT):
        return _copy_plain if accepts(dest_type, sa.Integer, never=(sa.Boolean,)) else None
    if isinstance(source_type, mysql.FLOAT):
        # at most 6-7 significant digits: the same decimal value read as a float either way
        return _copy_plain if accepts(dest_type, sa.Float) else None
    if isinstance(source_type, sa.Float):
        # MySQL spells a DOUBLE exactly (tested); into a real it would round twice
        return _copy_plain if accepts(dest_type, sa.Double) else None
    if isinstance(source_type, sa.Numeric):
        return _copy_plain if accepts(dest_type, sa.Numeric, never=(sa.Float,)) else None
    if isinstance(source_type, sa.DateTime):
        # read in the session's UTC; an aware destination converts on the Python path
        return _copy_plain if accepts(dest_type, sa.DateTime) and not getattr(dest_type, "timezone", False) else None
    if isinstance(source_type, sa.Date):
        return _copy_plain if accepts(dest_type, sa.Date, never=(sa.DateTime,)) else None
    if isinstance(source_type, sa.String) and not isinstance(source_type, mysql.SET):
        return _copy_escaped if accepts(dest_type, sa.String, never=(sa.Enum,)) else None
    return None


def copy_query(query):
    """``query`` (labelled columns: see Dialect.copy_out) as one COPY text line per row, in
    bytes (PyMySQL then decodes one value per row, not one per column)."""
    rows = query.subquery("pdr_q")

    def spelled(column):
        if column.name == "pdr_gone" and isinstance(column.type, sa.String):
            return column  # a batch's flag letter (Dialect.splits_new_rows): nothing to escape
        spell = copy_spelling(column.type)
        if spell is None:
            raise NotImplementedError(f"no COPY text for MySQL type {column.type!r}")
        # \N only for a NULL value: a spelling MySQL fails to build (NULL, e.g. past
        # max_allowed_packet) leaves the whole line NULL, and copy_out refuses it
        return sa.case((column.is_(None), "\\N"), else_=spell(column))

    parts = []
    for position, column in enumerate(rows.c):
        if position:
            parts.append("\t")
        parts.append(spelled(column))
    return sa.select(sa.cast(sa.func.concat(*parts), sa.LargeBinary))


# -- SQLite rows spelled as PostgreSQL COPY text ("copy") ------------------------------
# A SQLite value has the storage class it was stored with (``typeof``), whatever the
# column's declared type.  Each spelling below covers only the storage classes, and for
# text only the forms, that the Python path reads as a value it writes with the same
# meaning; any other value (a REAL in an INTEGER column, a timestamp with a zone or
# without seconds, a BLOB, text in a NUMERIC column) has no spelling: its line is NULL and
# the batch takes the Python path (``SQLiteDialect.copy_out``).
# REAL values are spelled by Python, as the Python path spells them (``repr``: the
# shortest text that reads back as the same double; SQLite's own printf gives 15 or 17
# digits, and a NUMERIC destination rounds 1.005 and 1.0049999999999999 apart): the query
# returns them between pieces of the line (``sqlite_copy_query``).

#: The text forms of a timestamp both paths read alike: SQLAlchemy's storage format with
#: and without microseconds (any other form, "T", fewer digits, a zone, is left to the
#: Python path).  Hours above 23 are refused apart (PostgreSQL reads "24:00:00").
_SQLITE_DAY = "[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]"
_SQLITE_SECOND = _SQLITE_DAY + " [0-2][0-9]:[0-5][0-9]:[0-5][0-9]"
_SQLITE_MICROSECOND = _SQLITE_SECOND + ".[0-9][0-9][0-9][0-9][0-9][0-9]"

#: A REAL (or INTEGER) value of a number column, spelled by Python (``sqlite_number_text``).
SQLITE_NUMBER = "number"


def _stored(expr, storage: str):
    return sa.func.typeof(expr) == storage


def _sqlite_integer(expr):
    return sa.case((_stored(expr, "integer"), sa.cast(expr, sa.Text)))


def _sqlite_flag(expr):
    number = sa.type_coerce(expr, sa.Integer)
    return sa.case((sa.and_(_stored(expr, "integer"), number == 0), "f"),
                   (sa.and_(_stored(expr, "integer"), number == 1), "t"))


def _sqlite_escaped(expr):
    """Text in COPY's text form (backslash, newline, carriage return and tab escaped)."""
    plain = sa.type_coerce(expr, sa.Text)
    text = plain
    for char, escaped in (("\\", "\\\\"), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        text = sa.func.replace(text, sa.literal(char, sa.Text), sa.literal(escaped, sa.Text))
    # most text has nothing to escape: one scan for the four characters, not four copies
    needs = plain.op("GLOB")(sa.literal("*[\\\n\r\t]*", sa.Text))
    return sa.case((_stored(expr, "text"), sa.case((needs, text), else_=plain)))


def _sqlite_form(*patterns, hour=False):
    def spell(expr):
        text = sa.type_coerce(expr, sa.Text)
        checks = [_stored(expr, "text"), sa.or_(*[text.op("GLOB")(p) for p in patterns]),
                  text.op("NOT GLOB")("0000*")]  # (year 0: Python has none)
        if hour:
            checks.append(sa.func.substr(text, 12, 2) < "24")
        return sa.case((sa.and_(*checks), text))

    return spell


def sqlite_copy_spelling(source_type, dest_type=None):
    """How a SQLite value of the declared ``source_type`` is spelled in COPY text: a
    function of the SQL expression, SQLITE_NUMBER (spelled by Python), or None when the
    text path does not take it; with ``dest_type`` (a PostgreSQL column type), None also
    when the pair is not exactly what the Python path writes."""
    if isinstance(source_type, sa.Boolean):
        return _sqlite_flag if accepts(dest_type, sa.Boolean) else None
    if isinstance(source_type, sa.Integer):
        return _sqlite_integer if accepts(dest_type, sa.Integer, never=(sa.Boolean,)) else None
    if isinstance(source_type, (sa.Float, sa.Numeric)):  # read as stored (SQLiteDialect.refine_reflected)
        # (SQLAlchemy 2.1's Float is no Numeric)
        return SQLITE_NUMBER if accepts(dest_type, sa.Float, sa.Numeric) else None
    if isinstance(source_type, sa.DateTime):
        if getattr(source_type, "timezone", False) or getattr(dest_type, "timezone", False):
            return None  # an aware value is converted to UTC on the Python path
        if not accepts(dest_type, sa.DateTime):
            return None
        return _sqlite_form(_SQLITE_SECOND, _SQLITE_MICROSECOND, hour=True)
    if isinstance(source_type, sa.Date):
        return _sqlite_form(_SQLITE_DAY) if accepts(dest_type, sa.Date, never=(sa.DateTime,)) else None
    if isinstance(source_type, sa.String) and not isinstance(source_type, (sa.Enum, sa.JSON)):
        return _sqlite_escaped if accepts(dest_type, sa.String, never=(sa.Enum,)) else None
    return None


def sqlite_number_text(value) -> str:
    """A number column's value in COPY text, as the Python path writes it (``_copy_value``
    of the float, of ``Decimal(repr(float))`` for a numeric column: the same digits)."""
    kind = type(value)
    if kind is float:
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)  # (SQLite stores no NaN)
    if kind is int:
        return str(value)
    if value is None:
        return "\\N"
    raise NotImplementedError(f"a {kind.__name__} value in a number column")


def sqlite_copy_query(query) -> tuple:
    """(select, positions): ``query`` (labelled columns: see Dialect.copy_out) as pieces of
    one COPY text line per row: the text pieces spelled by SQLite, and at ``positions``
    the values of number columns as stored, for ``sqlite_number_text``.  A piece is NULL
    when a value in it has no spelling."""
    rows = query.subquery("pdr_q")
    outputs, positions, piece = [], [], []

    def close():
        text = sa.literal("", sa.Text)
        for part in piece:
            text = text.concat(part)
        outputs.append(text)
        piece.clear()

    for index, column in enumerate(rows.c):
        if index:
            piece.append(sa.literal("\t", sa.Text))
        if column.name == "pdr_gone":
            # a batch's flag: a letter (Dialect.splits_new_rows), or whether the key is gone
            piece.append(column if isinstance(column.type, sa.String) else sa.case((column, "t"), else_="f"))
            continue
        spell = sqlite_copy_spelling(column.type)
        if spell is None:
            raise NotImplementedError(f"no COPY text for SQLite type {column.type!r}")
        if spell is SQLITE_NUMBER:
            close()
            positions.append(len(outputs))
            outputs.append(sa.type_coerce(column, sa.types.NullType()))
            continue
        piece.append(sa.case((column.is_(None), "\\N"), else_=spell(column)))
    close()
    return sa.select(*[o.label(f"pdr_p{i}") for i, o in enumerate(outputs)]), positions
