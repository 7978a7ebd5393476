"""The environment readers, kept here for the standalone project's settings.

They live in :mod:`plugin_server.env` (the app owns its settings); this
module re-exports them.
"""

from plugin_server.env import env_bool, env_choice, env_float, env_int, env_str, env_url

__all__ = ["env_bool", "env_choice", "env_float", "env_int", "env_str", "env_url"]
