"""Settings of the test host: PostHog's shape, and none of the plugin server's settings.

The server's settings (queues, Redis, Kafka, ...) come from the app's own
defaults, read from the environment the test gives the subprocess.
"""

import os

SECRET_KEY = "test-host-" + "k" * 40
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
ROOT_URLCONF = "posthog.urls"
AUTH_USER_MODEL = "posthog.User"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "posthog.apps.PostHogConfig",
    # Before django_q: the app gives django-q2 its Q_CLUSTER default.
    "plugin_server",
    "django_q",
]
if os.environ.get("HOST_DJANGO_Q_FIRST"):  # tests/test_host.py: the order plugin_server.W002 warns about
    INSTALLED_APPS.remove("django_q")
    INSTALLED_APPS.insert(INSTALLED_APPS.index("plugin_server"), "django_q")
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _database(name: str) -> dict[str, object]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": os.environ.get("HOST_DATABASE_USER", "postgres"),
        "HOST": os.environ.get("HOST_DATABASE_HOST", "127.0.0.1"),
        "PORT": os.environ.get("HOST_DATABASE_PORT", "5432"),
    }


# As PostHog: the person tables in a database of their own, a writer and a reader alias.
DATABASES = {
    "default": _database(os.environ["HOST_DATABASE_NAME"]),
    "persons_db_writer": _database(os.environ["HOST_PERSONS_DATABASE_NAME"]),
    "persons_db_reader": _database(os.environ["HOST_PERSONS_DATABASE_NAME"]),
}
# The plugin server's router too: it speaks only for its stand-ins, so it
# never vetoes PostHog's migrations, USE_EXISTING_POSTHOG_SCHEMA or not.
DATABASE_ROUTERS = ["posthog.person_db_router.PersonDBRouter", "plugin_server.routers.ExistingSchemaRouter"]
