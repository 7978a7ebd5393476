"""The plugin runtime: loading code (main process), the RestrictedPython sandbox (workers), meta APIs.

- :mod:`.loader` reads a plugin's code from its folder, archive or source column;
- :mod:`.sandbox` compiles it with RestrictedPython in a worker and finds its exports;
- :mod:`.guards`, :mod:`.safe_modules` and :mod:`.time_limit` are the sandbox's layers;
- :mod:`.meta` serves the plugins' meta calls in the main process.
"""
