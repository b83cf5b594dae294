"""Lethe's Python client (``lethe.client``): the HTTP API without the server's code."""
