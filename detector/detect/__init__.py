"""The detection engine, one module per stage, in the order the data flows:

- ``policy``: the settings every stage reads: the :class:`~detector.detect.policy.DetectionPolicy`
  and the metric axis (:data:`~detector.detect.policy.METRIC_NAMES`);
- ``baseline``: partitions (operation x SDK version, and each operation's fleet) and their
  baselines (levels, seasonal profiles, dispersions) from the trailing bucket history;
- ``features``: the bucket cube and the evidence of each test (duration, failure rate, failing
  calls, volume, the sequential CUSUM) over trailing spans;
- ``rollout``: a new version judged on everything since its first call;
- ``tail``: a new version's slow minority since its first call (calls above its operation's
  p95 for the hour, against its other versions');
- ``forest`` and ``score``: the isolation forest's span vectors, conformal p-values and models;
- ``calibrate``: each metric's significance threshold, from the tenant's own judged history
  (or ``alpha`` while that history is short);
- ``decide``: the gates, multiplicity, persistence and attribution that turn evidence into
  anomalies;
- ``hold``: an open alert of a since-rollout test kept open while its calls are too few to
  tell whether the change is over;
- ``stop``: a tenant-wide stop folded into one alert;
- ``candidate``: :class:`~detector.detect.candidate.Candidate`, a (partition, metric) that
  deviated, with the furthest gate it reached (the run report's record, alerting's input);
- ``engine``: :func:`~detector.detect.engine.detect` wires the stages for one window and
  :func:`~detector.detect.engine.detect_steps` judges any window as scheduled runs would;
- ``explain``: why a partition alerted or not at a time (``acs-detector explain``).

Consumes :class:`detector.schema.BucketAggregates`; produces anomalies, candidates and the
engine state. Nothing here reads or writes outside the model store it is given.

The package itself imports nothing: importing a stage pulls only what it needs (scikit-learn
loads only when a forest is used).
"""

__all__: list[str] = []
