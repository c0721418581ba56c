"""The Kubernetes side of the Kubernetes source: API client, list/watch, status write-back.

Nothing heavy is imported here: the CLI reads these constants without loading
the Kubernetes client library.
"""

from pathlib import Path

__all__ = ["SERVICE_ACCOUNT_CA", "SERVICE_ACCOUNT_TOKEN"]

# Where Kubernetes mounts a pod's service account credentials.
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
SERVICE_ACCOUNT_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
