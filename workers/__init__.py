"""Lethe workers: the unlearning engine (plain library) and, later, thin Celery tasks."""
