"""Roundhouse caption service."""
