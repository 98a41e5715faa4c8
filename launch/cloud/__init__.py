"""Cloud launchers: TPU VM, Vertex AI, Kubernetes, Dataflow, retraining DAGs and publishing.

Every launcher builds the same CLI command lines (commands.py) for the same container
image (the top-level Dockerfile) and prints them, or what it would submit, on --dry-run.
"""
