import uuid


def UUIDT() -> uuid.UUID:  # noqa: N802 -- PostHog's name
    return uuid.uuid4()
