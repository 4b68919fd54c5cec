"""Slide-level models, created by name through one registry."""
