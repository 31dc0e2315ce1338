"""Checks run when a reflection is saved: the mapping, its SQL, the custom statements.

Everything is checked against the live databases and nothing is written: SQL
fragments are compiled into a query that returns no row, and custom statements
are executed with sample parameters inside a transaction that is rolled back.
"""
from __future__ import annotations

import re

import sqlalchemy as sa

from .connections import begin, connect
from .errors import ConfigurationError
from .errors import describe as describe_error
from .mapping import Mapping, check_sql_fragment
from .schema import check_destination_names, reflect_table

_DML = re.compile(r"^\s*(insert|update|delete|replace|merge|upsert|with)\b", re.I)




def check_statement(text: str, what: str, allowed: set[str]) -> sa.TextClause:
    """A custom statement: one DML statement whose parameters are all known."""
    text = check_sql_fragment(text, what)
    if not _DML.match(text):
        raise ConfigurationError(f"{what} must be one INSERT, UPDATE, DELETE or MERGE statement.")
    clause = sa.text(text)
    unknown = sorted(set(clause._bindparams) - allowed)
    if unknown:
        raise ConfigurationError(
            f"{what} uses parameter(s) {', '.join(':' + u for u in unknown)} that are not columns of the "
            f"row; available: {', '.join(':' + a for a in sorted(allowed))}.")
    return clause


def check_names(reflection, mapping: Mapping) -> None:
    """Refuse destination names the destination engine cannot hold (NameRefused): the
    schema, and unless a custom statement writes instead, the table and the columns the
    mapping writes (for a mirror, the source's column names).  The worker checks the same
    before it creates a table."""
    destination = getattr(reflection, "destination", None)
    if destination is None:
        return
    from .dialects import dialect_for_kind

    writes_table = not (reflection.statement or "").strip()
    schema = getattr(reflection, "destination_schema", None)
    table = getattr(reflection, "destination_table", None) if writes_table else None
    check_destination_names(dialect_for_kind(destination.kind), schema, table,
                            mapping.dest_columns if writes_table else ())


def validate(reflection) -> Mapping:
    """Raise ConfigurationError (or ConnectionFailed) with a readable message, or return the mapping."""
    st = reflection.source
    with connect(st.database) as src:
        source = reflect_table(src, st.schema or None, st.table, st.database.describe())
        key = [c.name for c in source.primary_key.columns]
        mapping = Mapping.from_reflection(reflection, [c.name for c in source.columns], key)
        try:
            sample = src.execute(mapping.select(source).limit(1)).mappings().first()
        except sa.exc.DBAPIError as exc:
            raise ConfigurationError(
                f"The source database rejects the mapping's expressions or filter: {describe_error(exc)}")
        finally:
            src.rollback()
    check_names(reflection, mapping)
    sample = dict(sample) if sample else {c.name: None for c in source.columns}
    statement = (reflection.statement or "").strip()
    delete_statement = (reflection.delete_statement or "").strip()
    if not statement and not delete_statement:
        return mapping
    params = mapping.source_parameters(sample) if sample else {}
    for column in source.columns:
        params.setdefault(column.name, None)
    for dest in mapping.dest_columns:
        params.setdefault(dest, None)
    key_params = {**{k: sample.get(k) for k in key}, **{d: sample.get(s) for d, s in zip(mapping.dest_key, key)}}
    checks = []
    if statement:
        checks.append((check_statement(statement, "The statement", set(params)), params))
    if delete_statement:
        checks.append((check_statement(delete_statement, "The delete statement", set(key_params)), key_params))
    with connect(reflection.destination) as dst:
        for clause, values in checks:
            try:
                with begin(dst) as transaction:
                    dst.execute(clause, values)
                    transaction.rollback()
            except sa.exc.DBAPIError as exc:
                raise ConfigurationError(
                    f"The destination database rejects the statement: {describe_error(exc)}")
    return mapping
