#!/usr/bin/env python
"""Django's command-line utility for the plugin server."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.base")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as error:
        # One clear line, not a traceback, for a bad environment variable.
        sys.stderr.write(f"Configuration error: {error}\n")
        sys.exit(2)
    except Exception as error:
        # And one for a database or Redis that cannot be reached.
        from plugin_server.unreachable import unreachable_service

        line = unreachable_service(error)
        if line is None:
            raise
        sys.stderr.write(line + "\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
