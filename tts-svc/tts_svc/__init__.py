"""Roundhouse text-to-speech service."""
