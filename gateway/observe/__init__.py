"""Observability: what one request met, and what operators see of it.

- `record`: the typed `RequestRecord` the request flow fills (route, claim, error, status);
- `access`: the access line, written from the record;
- `metrics`: Prometheus counters and histograms, counted from the record (counting only);
- `logs`: structured JSON logs with secrets redacted (`get_logger`, `configure_logging`).

Nothing is re-exported here: `logs` sits at the bottom of the layers (everything logs) while
`record` and `metrics` read payment claims, so a package-level import of them would tie the
two ends together. Import the module you need.
"""
