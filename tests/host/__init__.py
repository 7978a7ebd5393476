"""A minimal Django project shaped like PostHog's monolith, the app installed in it.

``tests/host`` goes on ``sys.path`` (``PYTHONPATH``) and the project runs
with ``DJANGO_SETTINGS_MODULE=posthog.settings``, in subprocesses with their
own databases (see ``tests/test_host.py``). Where it matters it is PostHog's
shape of today (Django 5.2): an app labelled ``posthog`` with its own
migrations, models in PostHog's modules and names (``posthog.models.plugin``,
``posthog.models.person.person``, ...), a package ``__init__`` exporting what
PostHog's does (not ``PluginStorage``), ``AUTH_USER_MODEL = "posthog.User"``
(an email login), plugin log entries as a dataclass (ClickHouse), and the
person tables in a database of their own behind a router. Nothing else of
PostHog is here.
"""
