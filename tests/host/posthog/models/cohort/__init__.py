from .cohort import Cohort, CohortPeople

__all__ = ["Cohort", "CohortPeople"]
