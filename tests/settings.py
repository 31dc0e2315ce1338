"""Settings for the test suite.  The Django database is SQLite unless
PDR_TEST_DJANGO_DB=postgresql|mysql picks one of the live test servers."""
import json
import os
import tempfile

SECRET_KEY = "django-pdr-tests-not-secret"
PGCRYPTO_DEFAULT_KEY = "django-pdr-tests-credential-key-not-a-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_ace",
    "django_pdr",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
STATIC_URL = "/static/"

_django_db = os.environ.get("PDR_TEST_DJANGO_DB", "sqlite")
if _django_db == "postgresql":
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["PDR_TEST_PG_HOST"], "PORT": os.environ["PDR_TEST_PG_PORT"],
        "USER": os.environ["PDR_TEST_PG_USER"], "PASSWORD": os.environ["PDR_TEST_PG_PASSWORD"],
        "NAME": os.environ["PDR_TEST_PG_DB"],
    }}
else:
    # A file, not memory, so that worker subprocesses started by tests share it.
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("PDR_TEST_SQLITE_PATH", os.path.join(os.path.dirname(__file__), "..",
                                                                     ".pdr-test-django.sqlite3")),
        "OPTIONS": {"timeout": 60},
        # one file per test session (several sessions may run at once)
        "TEST": {"NAME": os.environ.get("PDR_TEST_SQLITE_TEST_PATH")
                 or os.path.join(tempfile.gettempdir(), f"pdr-test-django-{os.getpid()}.sqlite3")},
    }}

PDR = {"LEASE_SECONDS": int(os.environ.get("PDR_TEST_LEASE_SECONDS", "30")),
       # more settings for worker processes started by benchmarks, as JSON
       **json.loads(os.environ.get("PDR_TEST_PDR_JSON") or "{}")}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django_pdr": {"level": "INFO"}},
}
