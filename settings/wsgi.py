"""The project's WSGI application, for any WSGI server: ``gunicorn settings.wsgi``.

It serves the project's URLconf: PostHog's capture API (docs/capture.md) and
the admin. ``DJANGO_SETTINGS_MODULE`` defaults to ``settings.base``.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.base")

application = get_wsgi_application()
