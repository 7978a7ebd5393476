from .team import Team

__all__ = ["Team"]
