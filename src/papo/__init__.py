"""papo: a self-hostable, multi-tenant chat platform."""

__version__ = "0.1.0"
