"""Lethe's service: the edges (HTTP routes in ``<domain>/routes.py``, Celery tasks in
``jobs/tasks.py``, the ``lethe`` command line in ``cli/``) over the services that own
the database and the job flow (``<domain>/service.py``, ``jobs/flow.py``)."""
