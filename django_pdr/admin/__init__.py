"""The django-pdr admin: configure databases, capture and reflections; watch them run.

The admin presents and dispatches: connection tests, table lists, capture
install/uninstall, previews and state all come from library functions, and long
work (initial loads, resyncs) is only requested here and done by ``pdr-reflect``.
"""
from __future__ import annotations

from functools import update_wrapper

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected
from django.contrib.admin.utils import unquote
from django.http import HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from .. import keycodec
from ..errors import ConnectionFailed, PdrError, TableNotFound
from ..errors import describe as describe_error
from ..models import Database, DeadLetter, Reflection, SourceTable
from . import views
from .forms import DatabaseForm, ReflectionForm, SourceTableForm, SourceTableViewForm


class _PdrAdmin(admin.ModelAdmin):
    """Shared helpers (prefixed ``_pdr`` so user subclasses don't collide)."""

    # a database or source table still in use: say what to do instead of Django's "protected objects"
    delete_confirmation_template = "django_pdr/admin/delete_confirmation.html"
    delete_selected_confirmation_template = "django_pdr/admin/delete_selected_confirmation.html"

    class Media:
        css = {"all": ("django_pdr/admin.css",)}

    def _pdr_url(self, name, view, route):
        def bound(request, *args, **kwargs):
            return view(self, request, *args, **kwargs)

        update_wrapper(bound, view)
        info = self.opts.app_label, self.opts.model_name
        return path(route, self.admin_site.admin_view(bound), name="%s_%s_%s" % (*info, name))

    def _pdr_tables_url(self):
        return reverse(f"{self.admin_site.name}:django_pdr_database_tables")


# -- Database -----------------------------------------------------------------
@admin.register(Database)
class DatabaseAdmin(_PdrAdmin):
    form = DatabaseForm
    change_form_template = "django_pdr/admin/database_change_form.html"
    list_display = ("name", "kind", "location", "reachability", "last_checked_at")
    list_filter = ("kind", "last_check_ok")
    search_fields = ("name", "host", "database")
    actions = ["test_connection"]
    readonly_fields = ("last_checked_at", "reachability", "last_check_message")

    def get_fields(self, request, obj=None):
        fields = ["name", "kind", "database", "create_file", "host", "port", "username", "password"]
        if obj is not None and self.has_change_permission(request, obj):
            fields.append("clear_password")
        fields.append("options")
        if obj is None:
            return fields
        if not self.has_change_permission(request, obj):
            fields.remove("password")  # a read-only page must not show it either
        return fields + ["reachability", "last_checked_at", "last_check_message"]

    def get_urls(self):
        return [
            self._pdr_url("test_connection", views.test_connection_view, "<path:object_id>/test-connection/"),
            self._pdr_url("tables", views.tables_json, "tables/"),
        ] + super().get_urls()

    @admin.display(description=_("location"))
    def location(self, obj):
        if obj.file_based:
            return obj.database
        where = obj.host or "localhost"
        return f"{obj.database} at {where}:{obj.port}" if obj.port else f"{obj.database} at {where}"

    @admin.display(description=_("reachable"), ordering="last_check_ok")
    def reachability(self, obj):
        if obj.last_check_ok is None:
            return format_html('<span class="pdr-muted">{}</span>', _("not checked"))
        if obj.last_check_ok:
            return format_html('<span class="pdr-ok" title="{}">✔ {}</span>', obj.last_check_message,
                               _("yes"))
        return format_html('<span class="pdr-bad" title="{}">✘ {}</span>', obj.last_check_message, _("no"))

    @admin.action(description=_("Test connection"))
    def test_connection(self, request, queryset):
        for database in queryset:
            views.report_connection(request, database)


# -- SourceTable --------------------------------------------------------------
@admin.register(SourceTable)
class SourceTableAdmin(_PdrAdmin):
    form = SourceTableForm
    list_display = ("__str__", "primary_key", "capture_status", "blind_spots", "pending", "installed_at")
    list_filter = ("database",)
    list_select_related = ("database",)
    actions = ["install", "uninstall", "reinstall"]
    _pdr_shown = ["database", "schema", "table", "primary_key", "column_list", "event_table",
                  "capture_status", "capture_warning_list", "installed_at", "pending", "reflection_list"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["database", "pick", "schema", "table"]
        return list(self._pdr_shown)

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return list(self._pdr_shown)

    def get_form(self, request, obj=None, **kwargs):
        if obj is not None:  # the change page shows the table, it is not edited: no input help
            kwargs["form"] = SourceTableViewForm
        form = super().get_form(request, obj, **kwargs)
        if "pick" in form.base_fields:
            form.base_fields["pick"].widget.attrs["data-url"] = self._pdr_tables_url()
        return form

    def get_changeform_initial_data(self, request):
        return {k: v for k, v in super().get_changeform_initial_data(request).items() if k == "database"}

    @admin.display(description=_("primary key"))
    def primary_key(self, obj):
        return ", ".join(obj.key_columns) or "—"

    @admin.display(description=_("columns"))
    def column_list(self, obj):
        return format_html_join(", ", "{} <small class='pdr-muted'>{}</small>",
                                ((c.get("name"), c.get("type", "")) for c in obj.columns or [])) or "—"

    @admin.display(description=_("reflections"))
    def reflection_list(self, obj):
        reflections = obj.reflections.select_related("destination")
        return format_html_join(", ", '<a href="{}">{}</a>', (
            (reverse(f"{self.admin_site.name}:django_pdr_reflection_change", args=[r.pk]),
             f"{r.destination.name}: {r.destination_table}") for r in reflections
        )) or "—"

    @admin.display(description=_("capture"))
    def capture_status(self, obj):
        from ..capture import status

        try:
            state = status(obj)
        except Exception as exc:  # unreachable database, dropped table...
            return format_html('<span class="pdr-status pdr-status-unreachable" title="{}">{}</span>',
                               describe_error(exc), views.UNREACHABLE)
        return views.status_badge(state)

    @admin.display(description=_("changes not captured"))
    def capture_warning_list(self, obj):
        """What the capture cannot see on this table (found at install): shown as a warning."""
        if not obj.capture_warnings:
            return format_html('<span class="pdr-muted">{}</span>', _("none known"))
        return format_html('<ul class="pdr-warn pdr-capture-warnings">{}</ul>',
                           format_html_join("", "<li>⚠ {}</li>", ((w,) for w in obj.capture_warnings)))

    @admin.display(description=_("blind spots"))
    def blind_spots(self, obj):
        if not obj.capture_warnings:
            return "—"
        return format_html('<span class="pdr-warn" title="{}">⚠ {}</span>', "\n".join(obj.capture_warnings),
                           len(obj.capture_warnings))

    @admin.display(description=_("pending events"))
    def pending(self, obj):
        counts = [views.live_lag(r)["pending"] for r in obj.reflections.all()]
        counts = [c for c in counts if c is not None]
        return max(counts) if counts else "—"

    def _pdr_capture(self, request, queryset, verb, func):
        for source in queryset.select_related("database"):
            try:
                func(source)
            # each message starts with words of ours (the library's messages do too): the admin
            # capitalises a message's first letter, and a name must appear exactly as the user typed it
            except PdrError as exc:
                messages.error(request, str(exc))
            except Exception as exc:  # an engine error the library did not classify
                messages.error(request, f"Source table {source}: {describe_error(exc)}")
            else:
                messages.success(request, f"Source table {source}: capture {verb}.")

    @admin.action(description=_("Install capture triggers"))
    def install(self, request, queryset):
        from ..capture import install

        self._pdr_capture(request, queryset, "installed", install)

    @admin.action(description=_("Uninstall capture triggers (drops the event table)"))
    def uninstall(self, request, queryset):
        from ..capture import uninstall

        self._pdr_capture(request, queryset, "removed", uninstall)

    @admin.action(description=_("Reinstall capture triggers"))
    def reinstall(self, request, queryset):
        from ..capture import install

        self._pdr_capture(request, queryset, "reinstalled", lambda s: install(s, force=True))

    # deleting removes capture first, or refuses with the reason
    def _pdr_remove_capture(self, request, source) -> bool:
        from ..capture import uninstall

        try:
            uninstall(source)
        except TableNotFound as exc:
            messages.warning(request, f"Source table {source}: {exc} Its event table, if any, was not "
                                      f"removed.")
        except (ConnectionFailed, PdrError) as exc:
            messages.error(request, f"Source table {source} was not deleted: its capture triggers could "
                                    f"not be removed. {exc}")
            return False
        except Exception as exc:
            messages.error(request, f"Source table {source} was not deleted: its capture triggers could "
                                    f"not be removed. {describe_error(exc)}")
            return False
        return True

    def delete_view(self, request, object_id, extra_context=None):
        if request.method == "POST":
            source = self.get_object(request, object_id)
            if (source is not None and self.has_delete_permission(request, source)
                    and not source.reflections.exists()
                    and not self._pdr_remove_capture(request, source)):
                return HttpResponseRedirect(
                    reverse(f"{self.admin_site.name}:django_pdr_sourcetable_change", args=[source.pk]))
        return super().delete_view(request, object_id, extra_context)

    def get_actions(self, request, *args, **kwargs):
        actions = super().get_actions(request, *args, **kwargs)
        if "delete_selected" in actions:
            actions["delete_selected"] = (SourceTableAdmin._pdr_delete_selected, "delete_selected",
                                          delete_selected.short_description)
        return actions

    def _pdr_delete_selected(self, request, queryset):
        if request.POST.get("post") and not queryset.filter(reflections__isnull=False).exists():
            failed = [s.pk for s in queryset.select_related("database")
                      if not self._pdr_remove_capture(request, s)]
            queryset = queryset.exclude(pk__in=failed)
            if not queryset.exists():
                return None
        return delete_selected(self, request, queryset)


# -- Reflection -----------------------------------------------------------------
@admin.register(Reflection)
class ReflectionAdmin(_PdrAdmin):
    form = ReflectionForm
    change_form_template = "django_pdr/admin/reflection_change_form.html"
    change_list_template = "django_pdr/admin/reflection_change_list.html"
    list_display = ("__str__", "active", "state", "progress", "last_applied_at", "pending", "lag",
                    "short_error")
    list_filter = ("active", "status", "destination")
    list_select_related = ("source__database", "destination")
    actions = ["resync", "retry_dead_letters"]
    state_fields = ("state", "progress", "resync_requested", "last_applied_at", "pending", "lag",
                    "events_applied", "rows_applied", "last_error", "last_error_at", "failures",
                    "next_attempt_at")

    #: how many dead letters the reflection page shows (the rest: the dead-letter list)
    dead_letters_shown = 5

    def change_view(self, request, object_id, form_url="", extra_context=None):
        reflection = self.get_object(request, unquote(object_id))
        if reflection is not None:
            extra_context = {**(extra_context or {}),
                             "pdr_dead_letters": self._pdr_dead_letters(request, reflection)}
        return super().change_view(request, object_id, form_url, extra_context)

    def _pdr_dead_letters(self, request, reflection):
        """The reflection page's dead-letter summary: a count, the latest few, a link to the rest."""
        letters = reflection.dead_letters.all()
        count = letters.count()
        latest = list(letters.order_by("-last_seen", "-pk")[:self.dead_letters_shown]) if count else []
        list_admin = self.admin_site._registry.get(DeadLetter)
        allowed = list_admin is not None and list_admin.has_view_or_change_permission(request)
        return {"count": count, "latest": [(dead_letter_key(d), d) for d in latest], "shown": len(latest),
                "list_url": views.dead_letters_url(self.admin_site, reflection) if allowed else ""}

    def get_fieldsets(self, request, obj=None):
        config = ["source", "destination", "destination_pick", "destination_schema", "destination_table",
                  "active", "mapping", "delete_policy", "batch_size"]
        custom = (_("Custom statement (instead of the upsert)"),
                  {"fields": ["statement", "delete_statement"], "classes": ["collapse"] if obj is None or not
                   (obj.statement or obj.delete_statement) else []})
        if obj is not None and not self.has_change_permission(request, obj):
            config.remove("destination_pick")  # an input aid, nothing to show on a read-only page
        if obj is None:
            return [(None, {"fields": config}), custom]
        return [(None, {"fields": config}), custom,
                (_("State (written by pdr-reflect)"), {"fields": self.state_fields})]

    def get_readonly_fields(self, request, obj=None):
        readonly = list(self.state_fields) if obj is not None else []
        if not self.has_change_permission(request, obj):
            # only users who may change reflections edit mappings and statements
            readonly += ["mapping", "statement", "delete_statement"]
        return readonly

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if "destination_pick" in form.base_fields:
            form.base_fields["destination_pick"].widget.attrs["data-url"] = self._pdr_tables_url()
        return form

    def get_urls(self):
        return [
            self._pdr_url("dashboard", views.dashboard_view, "dashboard/"),
            self._pdr_url("preview", views.preview_view, "<path:object_id>/preview/"),
            self._pdr_url("resync", views.resync_view, "<path:object_id>/resync/"),
            self._pdr_url("retry", views.retry_view, "<path:object_id>/retry/"),
        ] + super().get_urls()

    @admin.display(description=_("status"), ordering="status")
    def state(self, obj):
        return views.status_badge(obj.status, obj.get_status_display())

    @admin.display(description=_("progress"))
    def progress(self, obj):
        return views.progress_text(obj) or "—"

    @admin.display(description=_("pending events"))
    def pending(self, obj):
        value = self._pdr_lag(obj)["pending"]
        return "unknown" if value is None else value

    @admin.display(description=_("lag"))
    def lag(self, obj):
        return views.format_lag(self._pdr_lag(obj)["lag"])

    @admin.display(description=_("last error"))
    def short_error(self, obj):
        if not obj.last_error:
            return "—"
        text = obj.last_error if len(obj.last_error) <= 120 else obj.last_error[:120] + "…"
        return format_html('<span class="pdr-bad" title="{}">{}</span>', obj.last_error, text)

    def _pdr_lag(self, obj):
        cache = obj.__dict__.setdefault("_pdr_lag_cache", {})
        if "lag" not in cache:
            cache["lag"] = views.live_lag(obj)
        return cache["lag"]

    @admin.action(description=_("Initial load / resync (carried out by pdr-reflect)"),
                  permissions=["change"])
    def resync(self, request, queryset):
        count = views.request_resync(queryset)
        messages.success(request, f"Resync requested for {count} reflection(s): pdr-reflect will reload "
                                  f"them; progress shows here.")

    @admin.action(description=_("Retry dead-lettered rows"), permissions=["change"])
    def retry_dead_letters(self, request, queryset):
        count = DeadLetter.objects.filter(reflection__in=queryset).update(retry_requested=True)
        messages.success(request, f"{count} dead-lettered row(s) will be retried by pdr-reflect.")


def dead_letter_key(letter) -> str:
    """A dead letter's source key as typed in the source (values joined by commas)."""
    try:
        values = keycodec.decode_key(letter.key)
    except (TypeError, ValueError, AttributeError):
        return str(letter.key)
    return ", ".join("NULL" if v is None else str(v) for v in values or ())


@admin.register(DeadLetter)
class DeadLetterAdmin(_PdrAdmin):
    list_display = ("reflection", "source_key", "short_error", "attempts", "last_seen", "retry_asked")
    list_display_links = ("source_key",)
    list_filter = ("retry_requested", "reflection", "reflection__destination")
    list_select_related = ("reflection__source__database", "reflection__destination")
    search_fields = ("error", "key")
    search_help_text = _("Search the error messages and the keys of the rejected rows.")
    ordering = ("-last_seen", "-pk")
    readonly_fields = ("reflection", "source_key", "error", "attempts", "first_seen", "last_seen",
                       "retry_requested")
    fields = readonly_fields
    actions = ["retry"]
    list_per_page = 50

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # every field is read-only (change permission is there for the Retry action): no Save buttons
        extra_context = {**(extra_context or {}), "show_save": False, "show_save_and_continue": False,
                         "show_save_and_add_another": False}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_list_display(self, request):
        if request.GET.get("reflection__id__exact"):  # the list of one reflection (its page links here)
            return tuple(f for f in self.list_display if f != "reflection")
        return self.list_display

    def has_add_permission(self, request):
        return False

    @admin.display(description=_("source key"))
    def source_key(self, obj):
        return dead_letter_key(obj)

    @admin.display(description=_("error"))
    def short_error(self, obj):
        return obj.error if len(obj.error) <= 120 else obj.error[:120] + "…"

    @admin.display(description=_("retry asked"), boolean=True, ordering="retry_requested")
    def retry_asked(self, obj):
        return obj.retry_requested

    @admin.action(description=_("Retry (pdr-reflect re-applies the current source row)"),
                  permissions=["change"])
    def retry(self, request, queryset):
        count = queryset.update(retry_requested=True)
        messages.success(request, f"{count} dead-lettered row(s) will be retried by pdr-reflect.")
