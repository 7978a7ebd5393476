"""PostHog's plugin server, as a Django app."""

# Written to the @posthog-plugin-server/version key (PostHog's system status page).
__version__ = "0.1.0"
