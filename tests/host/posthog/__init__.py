"""The stand-in for PostHog's Django app in the test host (see tests/host/__init__.py)."""
