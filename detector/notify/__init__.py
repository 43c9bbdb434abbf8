"""Notify: turn lifecycle decisions into digests and deliver them through apprise.

Config it reads (``[alerting]`` and ``[[notify.route]]``; every key optional)::

    [alerting]
    n_of_m = "1/1"               # fire when N of the last M evaluated windows are anomalous
    recovery_evaluations = 2     # consecutive clean evaluated windows to resolve ...
    resolve_after = "30m"        # ... spanning at least this long since the last anomaly
    repeat_interval = "4h"       # re-notify a still-firing alert
    send_resolved = true
    retention = "7d"             # forget quiet fingerprints after this long
    resolve_min_calls = 50       # fewer calls in the window = not evaluated (keeps state)
    max_items = 10               # alerts per digest before "+k more" (alias max_items_per_digest)
    outbox_max_age = "2d"        # undelivered messages are dropped (reported) after this
    report_url = "https://reports.example.com/acs"  # messages link to <it>/run-<stamp>-<id>.html
    keep_reports = 500           # run reports kept (runs), or an age: "14d"
    health_source_error_runs = 3 # self-health: source failed this many runs in a row
    health_no_data_after = "6h"  # self-health: no operations read for this long
    health_outbox_items = 10     # self-health: outbox holds this many messages ...
    health_outbox_age = "2h"     # ... or its oldest is this old
    health_repeat_interval = "12h"
    [[alerting.silences]]        # config silences (glob matchers, all must match)
    operation = "Start*"         # operation/operation_name, sdk_version, metric, severity, fingerprint
    ends_at = "2026-12-01T00:00:00Z"
    comment = "known issue"

    [[notify.route]]
    name = "oncall"
    urls = ["${ALERT_EMAIL_URL}", "json://127.0.0.1:8080/hook"]
    min_severity = "warning"     # info | warning | critical
    operations = ["Join", "Start*"]   # optional globs
    metrics = ["duration"]       # optional
    send_resolved = true         # optional
    health = true                # optional: also receive self-health notices
    max_items = 10               # optional per-route digest limit
    timeout = 15                 # optional: seconds a request waits for an answer (apprise: 4)

* :mod:`~detector.notify.render` (pure): decisions -> one message per channel;
* :mod:`~detector.notify.chart`: observed vs baseline band PNG (matplotlib, Agg);
* :mod:`~detector.notify.send`: the only module importing apprise;
* :mod:`~detector.notify.deliver`: routes, outbox retry, write-ahead delivery;
* :mod:`~detector.notify.health`: self-health notices;
* :mod:`~detector.notify.commands`: ``status``, ``silence`` and ``ack`` for the CLI;
* :mod:`~detector.notify.stage`: :func:`run_alerts`, the whole stage in the safe order.
"""

from __future__ import annotations

from detector.notify.deliver import (
    Delivery,
    DeliveryContext,
    DeliveryLimits,
    DeliveryReport,
    Route,
    deliver,
    validate_routes,
)
from detector.notify.health import HealthPolicy, check_health
from detector.notify.render import DigestLinks
from detector.notify.stage import (
    AlertOutcome,
    EngineOutput,
    JudgedWindow,
    record_failed_run,
    run_alerting,
    run_alerts,
)

__all__ = [
    "AlertOutcome",
    "Delivery",
    "DeliveryContext",
    "DeliveryLimits",
    "DeliveryReport",
    "DigestLinks",
    "EngineOutput",
    "HealthPolicy",
    "JudgedWindow",
    "Route",
    "check_health",
    "deliver",
    "record_failed_run",
    "run_alerting",
    "run_alerts",
    "validate_routes",
]
