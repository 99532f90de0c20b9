"""retrain serve: the retraining service (HTTP API, jobs, model registry)."""
