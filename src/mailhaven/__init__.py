"""Mailhaven: a self-hosted mail server in one asyncio process."""

__version__ = "0.1.0"
