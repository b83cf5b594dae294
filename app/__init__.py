"""Lethe's application layer: the command line now, the HTTP API later."""
