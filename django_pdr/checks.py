"""Django system checks (ids ``django_pdr.E0xx`` / ``W0xx``, documented in docs/checks.md)."""
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.compatibility)
def check_settings(app_configs=None, **kwargs):
    messages = []
    if "django_ace" not in settings.INSTALLED_APPS:
        messages.append(Error(
            "django_ace is not in INSTALLED_APPS.",
            hint="Add 'django_ace' to INSTALLED_APPS: the admin edits mappings in ACE editors.",
            id="django_pdr.E001",
        ))
    if not getattr(settings, "PGCRYPTO_DEFAULT_KEY", None):
        messages.append(Warning(
            "PGCRYPTO_DEFAULT_KEY is not set: database credentials are encrypted with SECRET_KEY.",
            hint="Set a dedicated PGCRYPTO_DEFAULT_KEY; otherwise rotating SECRET_KEY makes every "
                 "stored password unreadable.",
            id="django_pdr.W001",
        ))
    try:
        from . import conf

        conf.get("BATCH_SIZE")
    except Exception as exc:
        messages.append(Error(str(exc), hint="Fix the PDR dict in settings.", id="django_pdr.E002"))
    return messages
