"""As PostHog's: the person models live in the persons database, the rest in default."""

from typing import Any

PERSONS_DB_MODELS = {"person", "persondistinctid", "cohortpeople"}
PERSONS_DATABASES = {"persons_db_writer", "persons_db_reader"}


def _is_person_model(model: Any) -> bool:
    return model._meta.app_label == "posthog" and model._meta.model_name in PERSONS_DB_MODELS


class PersonDBRouter:
    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "persons_db_reader" if _is_person_model(model) else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "persons_db_writer" if _is_person_model(model) else None

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return True if _is_person_model(type(obj1)) or _is_person_model(type(obj2)) else None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        is_person = app_label == "posthog" and model_name in PERSONS_DB_MODELS
        if db in PERSONS_DATABASES:
            return db == "persons_db_writer" and is_person
        return False if is_person else None
