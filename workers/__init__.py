"""What Lethe's GPU workers run: the unlearning engine (``workers.engine``), a plain
library that imports nothing of ``app``. The Celery tasks that call it through the job
flow are an edge of the service (``app.jobs.tasks``)."""
