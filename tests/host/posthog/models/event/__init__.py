# As PostHog's: the package does not export Event (posthog.models.event.event has it).
