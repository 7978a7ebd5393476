"""PostHog's plugin server, as a Django app."""
