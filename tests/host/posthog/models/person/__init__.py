from .person import Person, PersonDistinctId

__all__ = ["Person", "PersonDistinctId"]
