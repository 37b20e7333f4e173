"""Local GPU jobs on `atelier worker` processes: a fair job board in Redis, Celery as carrier."""
