# What PostHog's posthog/models/__init__.py exports of these models; like
# PostHog's, it does not export PluginStorage (posthog.models.plugin has it).
from .cohort import Cohort, CohortPeople
from .element import Element
from .element_group import ElementGroup
from .event.event import Event
from .event_definition import EventDefinition
from .organization import Organization, OrganizationMembership
from .person import Person, PersonDistinctId
from .plugin import Plugin, PluginAttachment, PluginConfig, PluginLogEntry
from .property_definition import PropertyDefinition
from .team import Team
from .user import User, UserManager

__all__ = [
    "Cohort",
    "CohortPeople",
    "Element",
    "ElementGroup",
    "Event",
    "EventDefinition",
    "Organization",
    "OrganizationMembership",
    "Person",
    "PersonDistinctId",
    "Plugin",
    "PluginAttachment",
    "PluginConfig",
    "PluginLogEntry",
    "PropertyDefinition",
    "Team",
    "User",
    "UserManager",
]
