"""Roundhouse model-host kit: what every family service is built on."""
