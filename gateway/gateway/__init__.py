"""Roundhouse gateway."""
