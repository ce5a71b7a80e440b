"""Names two parts of the program agree on, written once.

The backup jobs (pgBackRest, the backup issue) write their metrics as a Prometheus text file into
`TEXTFILE_HOST_DIR` on the host; node-exporter's textfile collector, mounted read-only on that
directory, exposes them; the monitoring's "backup too old" alert reads them by these names.
"""

from __future__ import annotations

# Host directory node-exporter's textfile collector reads (`--collector.textfile.directory`);
# writers replace their `<job>.prom` file atomically (write to a temporary name, then rename).
TEXTFILE_HOST_DIR = "/var/lib/mysaaschat/metrics-textfile"

# Unix time of the last successful backup, labels: stanza, type (full | diff | incr).
BACKUP_LAST_SUCCESS = "mysaaschat_backup_last_success_timestamp_seconds"
# Unix time of the last WAL segment archived to the repository, label: stanza.
BACKUP_ARCHIVE_LAST_SUCCESS = "mysaaschat_backup_archive_last_success_timestamp_seconds"
# Seconds between the newest WAL the server wrote and the newest one in the repository, label: stanza.
BACKUP_ARCHIVE_LAG = "mysaaschat_backup_archive_lag_seconds"

# What every product service serves on its `metrics` endpoint (express-prom-bundle's defaults, which
# prom-client services use): a histogram of request durations with the status code as a label. The
# 5xx-ratio and p95-latency alerts and the per-service dashboard read these names.
SERVICE_REQUEST_DURATION = "http_request_duration_seconds"
SERVICE_STATUS_LABEL = "status_code"

