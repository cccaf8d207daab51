"""Publish/subscribe between connections and nodes. Events are stored first, then published."""
