"""The browser side: widget, dashboards and client library, served as static files."""
