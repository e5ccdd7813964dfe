"""The Luckey edge gateway daemon: domain, cache, decisions, doors, sync, web, CLI."""

__version__ = "0.1.0"
