"""Notify: turn lifecycle decisions into digests and deliver them through apprise.

* :mod:`~detector.notify.render` (pure): decisions -> one message per channel;
* :mod:`~detector.notify.chart`: observed vs baseline band PNG (matplotlib, Agg);
* :mod:`~detector.notify.send`: the only module importing apprise;
* :mod:`~detector.notify.deliver`: routes, outbox retry, write-ahead delivery;
* :mod:`~detector.notify.health`: self-health notices;
* :mod:`~detector.notify.commands`: ``status``, ``silence`` and ``ack`` for the CLI;
* :mod:`~detector.notify.stage`: :func:`run_alerts`, the whole stage in the safe order.
"""

from __future__ import annotations

from detector.notify.deliver import Delivery, DeliveryReport, Route, deliver, validate_routes
from detector.notify.health import HealthPolicy, check_health
from detector.notify.stage import AlertOutcome, record_failed_run, run_alerting, run_alerts

__all__ = [
    "AlertOutcome",
    "Delivery",
    "DeliveryReport",
    "HealthPolicy",
    "Route",
    "check_health",
    "deliver",
    "record_failed_run",
    "run_alerting",
    "run_alerts",
    "validate_routes",
]
