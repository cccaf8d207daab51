"""The load generator's parts: pure statistics, process meters, clients and scenarios.

`bench/loadgen.py` is the command line; each scenario module holds a controller (starts the
servers, drives the client workers, measures) and a `Worker` (the client side, run in its
own process so client CPU does not share the server's event loop).
"""
