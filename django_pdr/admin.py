"""Admin registration (the full GUI is built on top of these classes)."""
from django.contrib import admin

from .models import Database, Reflection, SourceTable


@admin.register(Database)
class DatabaseAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "host", "database", "last_check_ok")
    exclude = ("password",)


@admin.register(SourceTable)
class SourceTableAdmin(admin.ModelAdmin):
    list_display = ("__str__", "installed_at")


@admin.register(Reflection)
class ReflectionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "active", "status", "last_applied_at", "last_error")
