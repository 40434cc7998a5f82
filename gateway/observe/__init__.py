"""Observability: structured logs, Prometheus metrics, and the typed per-request record the
request flow fills and the access line and the metrics read."""
