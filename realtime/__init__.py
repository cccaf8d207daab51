"""Realtime transports: the pure protocol layer and the thin WebSocket shells around it."""
