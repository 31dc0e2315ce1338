"""Admin forms: present the models, validate against the live databases through the library."""
from __future__ import annotations

import json
from types import SimpleNamespace

from django import forms
from django.utils.translation import gettext_lazy as _
from django_ace import AceWidget

from ..dialects import KINDS
from ..errors import PdrError
from ..models import Database, Reflection, SourceTable


def mirror_mapping_json(column_names) -> str:
    """The JSON of the exact-mirror mapping (what an empty mapping means)."""
    return json.dumps({"columns": {c: c for c in column_names}}, indent=2, ensure_ascii=False)


def table_choices(database):
    """(choices, error message) of the tables of ``database`` for a picker."""
    from ..introspect import list_tables

    try:
        tables = list_tables(database)
    except PdrError as exc:
        return [], str(exc)
    return [("", "---------")] + [(t.value, t.label) for t in tables], ""


def _inner(widget):
    """The widget itself, inside the admin's related-object wrapper."""
    return getattr(widget, "widget", widget)


def _database_from(form, field):
    """The Database chosen in ``field`` of a bound or initial form, or None."""
    value = form.data.get(form.add_prefix(field)) if form.is_bound else form.initial.get(field)
    if value in (None, "") and getattr(form.instance, f"{field}_id", None):
        value = getattr(form.instance, f"{field}_id")
    if isinstance(value, Database):
        return value
    try:
        return Database.objects.get(pk=int(value))
    except (TypeError, ValueError, Database.DoesNotExist):
        return None


class DatabaseForm(forms.ModelForm):
    password = forms.CharField(
        label=_("Password"), required=False, strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_("Write-only: never shown again. Leave blank to keep the stored password."))
    clear_password = forms.BooleanField(label=_("Clear the stored password"), required=False)

    class Meta:
        model = Database
        fields = ("name", "kind", "database", "create_file", "host", "port", "username", "password", "options")
        labels = {"database": _("Database name or SQLite file path")}

    class Media:
        js = ("django_pdr/admin.js",)
        css = {"all": ("django_pdr/admin.css",)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "kind" in self.fields:
            self.fields["kind"].widget.attrs["data-pdr-kind"] = "1"
            # what the database field holds for each kind (admin.js relabels it)
            self.fields["kind"].widget.attrs["data-pdr-kinds"] = json.dumps(
                {kind: {"label": cls.database_label, "placeholder": cls.database_placeholder,
                        "file": cls.file_based} for kind, cls in KINDS.items()})
        if "password" in self.fields and self.instance.pk and self.instance.password:
            self.fields["password"].help_text = _(
                "A password is stored (write-only: never shown). Leave blank to keep it.")
        if not self.instance.pk:
            self.fields.pop("clear_password", None)

    def clean(self):
        data = super().clean()
        if data.get("kind") in KINDS and KINDS[data["kind"]].file_based:
            # a file has no server credentials: drop whatever the hidden fields held
            data.update(host="", port=None, username="", password="")
            return data
        data["create_file"] = False  # hidden for a server, whose database django-pdr never creates
        if data.get("clear_password"):
            data["password"] = ""
        elif not data.get("password"):
            data["password"] = self.instance.password or ""
        return data


class SourceTableForm(forms.ModelForm):
    pick = forms.CharField(
        label=_("Table"), required=False,
        widget=forms.Select(attrs={"data-pdr-table-picker": "database"}),
        help_text=_("Tables of the chosen database (django-pdr's own tables are hidden)."))

    class Meta:
        model = SourceTable
        fields = ("database", "pick", "schema", "table")
        labels = {"table": _("Table name")}
        help_texts = {"table": _("Filled in when you pick a table above; or type the name of a table "
                                 "that is not listed.")}

    class Media:
        js = ("django_pdr/admin.js",)
        css = {"all": ("django_pdr/admin.css",)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "table" not in self.fields:  # the change page: everything is read-only
            return
        self.fields["table"].required = False
        _inner(self.fields["database"].widget).attrs["data-pdr-database"] = "1"
        database = _database_from(self, "database")
        if database is not None:
            choices, error = table_choices(database)
            self.fields["pick"].widget.choices = choices
            if error:
                self.fields["pick"].help_text = error
        else:
            self.fields["pick"].widget.choices = [("", _("Choose a database first"))]

    def clean(self):
        from ..introspect import TableRef

        data = super().clean()
        if "table" not in self.fields:
            return data
        if data.get("pick"):
            try:
                ref = TableRef.from_value(data["pick"])
            except ValueError:
                self.add_error("pick", _("Choose a table from the list."))
                return data
            data["schema"], data["table"] = ref.schema, ref.name
        if not data.get("table"):
            self.add_error("pick", _("Choose a table (or type its name)."))
        return data

    def _post_clean(self):
        # model.full_clean discovers the primary key (a readable error without one);
        # then a new source gets its capture installed before it is saved
        super()._post_clean()
        if self.errors or self.instance.pk:
            return
        try:
            self.instance.install()
        except PdrError as exc:
            self.add_error(None, str(exc))
        except Exception as exc:  # an engine error the library did not classify
            self.add_error(None, _("Could not install capture: %s") % exc)


class SourceTableViewForm(forms.ModelForm):
    """The source table's change page: every field is read-only, so no input help is shown."""

    class Meta:
        model = SourceTable
        fields = ()
        labels = {"schema": _("Schema"), "table": _("Table")}
        help_texts = {"schema": "", "table": ""}

    class Media:
        css = {"all": ("django_pdr/admin.css",)}


MAPPING_HELP = _(
    'Which source column fills each destination column, as JSON: {"columns": {"destination_column": '
    '"source_column", …}}. A column can also be an SQL expression or a constant, and a "filter" can leave '
    "rows out (see docs/transforms.md). Leave it empty to copy every source column under its own name.")


class ReflectionForm(forms.ModelForm):
    destination_pick = forms.CharField(
        label=_("Existing table"), required=False,
        widget=forms.Select(attrs={"data-pdr-table-picker": "destination"}),
        help_text=_("Pick an existing table of the destination, or type a new table name below: "
                    "pdr-reflect creates a missing table."))

    class Meta:
        model = Reflection
        fields = ("source", "destination", "destination_pick", "destination_schema", "destination_table",
                  "active", "mapping", "statement", "delete_statement", "delete_policy", "batch_size")
        widgets = {"mapping": AceWidget(mode="json", width="900px", height="300px", toolbar=False),
                   "statement": AceWidget(mode="sql", width="900px", height="160px", toolbar=False),
                   "delete_statement": AceWidget(mode="sql", width="900px", height="80px", toolbar=False)}

    class Media:
        js = ("django_pdr/admin.js",)
        css = {"all": ("django_pdr/admin.css",)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "destination" in self.fields:
            _inner(self.fields["destination"].widget).attrs["data-pdr-database"] = "1"
        if "destination_table" not in self.fields:  # read-only page
            return
        self.fields["destination_table"].required = False
        destination = _database_from(self, "destination") if "destination" in self.fields else None
        if destination is not None:
            choices, error = table_choices(destination)
            self.fields["destination_pick"].widget.choices = choices
            if error:
                self.fields["destination_pick"].help_text = error
        else:
            self.fields["destination_pick"].widget.choices = [("", _("Choose a destination first"))]
        source = self._source()
        if "mapping" in self.fields:
            self.fields["mapping"].help_text = MAPPING_HELP
            if source is not None and source.columns and not self.is_bound and not self.instance.pk \
                    and not self.initial.get("mapping"):
                self.initial["mapping"] = mirror_mapping_json([c["name"] for c in source.columns])

    def _source(self):
        value = self.data.get(self.add_prefix("source")) if self.is_bound else self.initial.get("source")
        if value in (None, "") and self.instance.source_id:
            value = self.instance.source_id
        if isinstance(value, SourceTable):
            return value
        try:
            return SourceTable.objects.select_related("database").get(pk=int(value))
        except (TypeError, ValueError, SourceTable.DoesNotExist):
            return None

    def clean(self):
        from ..introspect import TableRef

        data = super().clean()
        if "destination_table" not in self.fields:
            return data
        if data.get("destination_pick"):
            try:
                ref = TableRef.from_value(data["destination_pick"])
            except ValueError:
                self.add_error("destination_pick", _("Choose a table from the list."))
                return data
            data["destination_schema"], data["destination_table"] = ref.schema, ref.name
        if not data.get("destination_table"):
            self.add_error("destination_table", _("Pick an existing table or type the name of a new one."))
            return data
        source = data.get("source") or (self.instance.source if self.instance.source_id else None)
        destination = data.get("destination") or (self.instance.destination
                                                  if self.instance.destination_id else None)
        if source is not None and destination is not None and source.database_id == destination.pk \
                and (source.schema or "") == (data.get("destination_schema") or "") \
                and source.table == data["destination_table"]:
            self.add_error("destination_table", _("The destination cannot be the source table itself."))
            return data
        if source is not None and "mapping" in self.fields and not self.errors:
            self._validate_mapping(source, destination, data)
        return data

    def _validate_mapping(self, source, destination, data):
        """Check the mapping against the live source columns (and the destination table, if it exists)."""
        text = (data.get("mapping") or "").strip()
        if text:
            try:
                json.loads(text)
            except ValueError as exc:
                self.add_error("mapping", _("The mapping is not valid JSON: %s.") % exc)
                return
        from ..validation import validate

        statement = (data.get("statement") or "").strip()
        candidate = SimpleNamespace(
            pk=self.instance.pk or "(new)", mapping=text, source=source, destination=destination,
            destination_schema=data.get("destination_schema") or "",
            destination_table=data["destination_table"],
            statement=statement, delete_statement=(data.get("delete_statement") or "").strip())
        try:
            if destination is None:
                candidate.statement = candidate.delete_statement = ""
            mapping = validate(candidate)
        except PdrError as exc:
            # the library names the reflection ("The mapping of reflection 7 …", "(new)" before it is
            # saved); on the reflection's own form, "The mapping" is what the user is looking at
            message = str(exc).replace(f"The mapping of reflection {candidate.pk}", "The mapping")
            field = getattr(exc, "field", None) or (
                "mapping" if "mapping" in message else
                "delete_statement" if "delete statement" in message else
                "statement" if "statement" in message.lower() else None)
            self.add_error(field, message)
            return
        if destination is None or statement:
            return
        from ..introspect import table_columns

        try:
            existing = table_columns(destination, data.get("destination_schema") or None,
                                     data["destination_table"])
        except PdrError as exc:
            self.add_error("destination", str(exc))
            return
        if existing is None:
            return  # a new table: pdr-reflect creates it with the mapped columns
        missing = [c for c in mapping.dest_columns if c not in existing]
        if missing:
            self.add_error("mapping", _("The destination table %(table)s has no column(s) %(cols)s: "
                                        "add them, or map the source columns to existing ones.")
                           % {"table": data["destination_table"], "cols": ", ".join(missing)})
