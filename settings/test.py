"""Settings for the test suite: the original's test defaults, real services.

``PLUGIN_SERVER_TEST_DB`` names the throw-away test database, so that two
test runs on one machine do not trample each other.
"""

import os

os.environ.setdefault("PLUGIN_SERVER_TESTING", "true")

from settings.base import *  # noqa: E402,F403
from settings.base import DATABASES  # noqa: E402

DATABASES["default"].setdefault("TEST", {})["NAME"] = os.environ.get("PLUGIN_SERVER_TEST_DB", "test_posthog")
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
