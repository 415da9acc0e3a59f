"""Leeway's application layer: the one place that runs commands and answers queries."""

from .app import LeewayApplication, Page

__all__ = ["LeewayApplication", "Page"]
