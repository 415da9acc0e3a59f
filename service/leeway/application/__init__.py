"""Leeway's application layer: the one place that runs commands and answers queries."""

from .app import LeewayApplication
from .queries import Page

__all__ = ["LeewayApplication", "Page"]
