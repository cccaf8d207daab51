"""Warmline: real-time customer-support chat with a bot that hands off to humans."""

__version__ = "0.1.0"
