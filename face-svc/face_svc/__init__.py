"""Roundhouse face service."""
