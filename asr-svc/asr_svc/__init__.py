"""Roundhouse speech-to-text service."""
