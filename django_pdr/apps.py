from django.apps import AppConfig


class PdrConfig(AppConfig):
    name = "django_pdr"
    verbose_name = "Pantograph Database Replicator"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system checks)
