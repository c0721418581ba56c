"""Health signals from the proxies: Envoy's metrics service and the verdict a rollout reads."""
