from .element import Element

__all__ = ["Element"]
