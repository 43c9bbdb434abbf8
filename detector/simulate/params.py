"""Every knob of the simulator in one place: :class:`SimParams` and its parts.

Nothing here is published by Microsoft except the latency goals and the result codes; the
operation mix, the failure rates, the version shares and the quirk rates are our own choices
(see ``reference/acs-logs.md``, "What a realistic simulator should reproduce"), so they are all
parameters. The defaults produce ~20 rows per call leg and ~340,000 rows for a week.

This module is pure data (no I/O, no randomness).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DEFAULT_START_ISO",
    "REQUIRED_OPS",
    "LagComponent",
    "OpSpec",
    "QuirkRates",
    "ResultCode",
    "SimParams",
    "VersionSpec",
    "check_params",
]

#: Operations the leg model writes whatever the mix (each needs an OpSpec in ``SimParams.ops``).
REQUIRED_OPS: Final[tuple[str, ...]] = (
    "CallAgentInit",
    "HandleIncomingCall",
    "Hangup",
    "Drop",
    "UnmuteMicrophone",
    "IsMuted-changed",
    "StopVideo",
    "DisposeView",
    "StopScreenShare",
)

#: Default first instant of a simulation: a fixed Monday, so a seed alone fixes the output.
DEFAULT_START_ISO: Final = "2026-11-02T00:00:00Z"


@dataclass(frozen=True)
class ResultCode:
    """One ``(ResultType, ResultSignature, SubCode)`` triple, from Microsoft's workbook table."""

    result_type: str
    signature: int
    subcode: int | None  # None: no SubCode key in the payload
    reason: str | None = None  # FailureReason written for call-start operations


#: Success codes. ``Success`` is the older spelling; both count as successes.
SUCCEEDED: Final = ResultCode("Succeeded", 200, None)
SUCCESS_LEGACY: Final = ResultCode("Success", 200, None)

# Codes below are from the "Voice and video insights" workbook error table (reference §1.5).
TOKEN_EXPIRED: Final = ResultCode("ExpectedError", 401, 40235, "TokenExpired")
SHARE_BEFORE_CONNECTED: Final = ResultCode("ExpectedError", 412, 41071)
STREAM_UNAVAILABLE: Final = ResultCode("ExpectedError", 404, 43202)
NOBODY_ANSWERED: Final = ResultCode("ExpectedError", 487, 10004, "NoAnswer")
REMOTE_NOT_REGISTERED: Final = ResultCode("ExpectedError", 480, 10076, "RemoteNotRegistered")
INIT_FAILED: Final = ResultCode("UnexpectedClientError", 500, 40000)
AGENT_CREATION_FAILED: Final = ResultCode("UnexpectedClientError", 409, 40001)
STACK_INIT_TIMEOUT: Final = ResultCode("UnexpectedClientError", 408, 40104, "Timeout")
NO_TOKEN: Final = ResultCode("UnexpectedClientError", 401, 44110, "TokenUnavailable")
VIDEO_START_FAILED: Final = ResultCode("UnexpectedClientError", 410, 41048)
SERVER_NO_ANSWER: Final = ResultCode("UnexpectedServerError", 480, 560480, "ServerNoAnswer")
# Legacy vocabulary still seen in Microsoft's queries (reference §1.4).
LEGACY_FAILED: Final = ResultCode("Failed", 500, 40000)
LEGACY_EXPECTED: Final = ResultCode("ExpectedClientError", 401, 40235, "TokenExpired")


@dataclass(frozen=True)
class OpSpec:
    """Duration and outcome model of one operation.

    Durations are log-normal: ``median_ms * exp(sigma * N(0, 1))``, times platform and version
    factors; point events have ``median_ms = 0`` and are written with ``DurationMs = 0``.
    ``fail`` and ``expected`` are per-attempt probabilities of an unexpected failure and of an
    expected error; their codes are drawn from ``fail_codes`` / ``expected_codes`` by weight.
    """

    median_ms: float
    sigma: float = 0.5
    fail: float = 0.002
    expected: float = 0.0
    fail_codes: tuple[tuple[ResultCode, float], ...] = ((STACK_INIT_TIMEOUT, 1.0),)
    expected_codes: tuple[tuple[ResultCode, float], ...] = ((TOKEN_EXPIRED, 1.0),)
    payload: str = "api"  # api | call | video | view | share | ufd | event


def _ops() -> dict[str, OpSpec]:
    # Medians sit well under Microsoft's latency goals (CallAgentInit <= 2 s, Join <= 5 s,
    # StartCall <= 1 s, StartVideo <= 7 s, StopVideo <= 1 s, AcceptIncomingCall <= 3 s,
    # HandleIncomingCall <= 2 s; CreateView sample 577 ms) with a tail above them.
    call_fail = ((STACK_INIT_TIMEOUT, 0.5), (SERVER_NO_ANSWER, 0.3), (NO_TOKEN, 0.2))
    return {
        "CallAgentInit": OpSpec(
            700,
            0.55,
            0.006,
            0.01,
            ((INIT_FAILED, 0.6), (AGENT_CREATION_FAILED, 0.3), (NO_TOKEN, 0.1)),
            ((TOKEN_EXPIRED, 1.0),),
        ),
        "AskDevicePermission": OpSpec(1200, 0.9, 0.002, 0.01),
        "StartCall": OpSpec(
            420,
            0.45,
            0.01,
            0.02,
            call_fail,
            ((NOBODY_ANSWERED, 0.6), (REMOTE_NOT_REGISTERED, 0.4)),
            "call",
        ),
        "Join": OpSpec(1900, 0.45, 0.012, 0.005, call_fail, ((TOKEN_EXPIRED, 1.0),), "call"),
        "HandleIncomingCall": OpSpec(380, 0.5, 0.004, 0.0, call_fail, payload="call"),
        "AcceptIncomingCall": OpSpec(
            1300, 0.5, 0.012, 0.005, call_fail, ((TOKEN_EXPIRED, 1.0),), "call"
        ),
        "RejectIncomingCall": OpSpec(250, 0.5, 0.003, 0.0, call_fail, payload="call"),
        "Hangup": OpSpec(300, 0.5, 0.004, 0.0, ((STACK_INIT_TIMEOUT, 1.0),)),
        "Drop": OpSpec(150, 0.6, 0.0, 0.0),
        "MuteMicrophone": OpSpec(60, 0.6, 0.002, 0.0),
        "UnmuteMicrophone": OpSpec(85, 0.6, 0.003, 0.0),
        "StartVideo": OpSpec(
            1500,
            0.55,
            0.015,
            0.01,
            ((VIDEO_START_FAILED, 0.8), (STACK_INIT_TIMEOUT, 0.2)),
            ((SHARE_BEFORE_CONNECTED, 1.0),),
            "video",
        ),
        "StopVideo": OpSpec(160, 0.5, 0.003, 0.0, payload="video"),
        "SwitchSource": OpSpec(750, 0.5, 0.01, 0.0, ((VIDEO_START_FAILED, 1.0),), payload="video"),
        "CreateView": OpSpec(
            577,
            0.6,
            0.01,
            0.01,
            ((VIDEO_START_FAILED, 0.7), (STACK_INIT_TIMEOUT, 0.3)),
            ((STREAM_UNAVAILABLE, 1.0),),
            "view",
        ),
        "DisposeView": OpSpec(40, 0.6, 0.001, 0.0, payload="view"),
        "StartScreenShare": OpSpec(
            2100,
            0.5,
            0.015,
            0.02,
            ((VIDEO_START_FAILED, 1.0),),
            ((SHARE_BEFORE_CONNECTED, 1.0),),
            "share",
        ),
        "StopScreenShare": OpSpec(200, 0.5, 0.003, 0.0, payload="share"),
        "UserFacingDiagnostics": OpSpec(0, payload="ufd", fail=0.0),
    }


#: Point events (no duration): Call Diagnostics draws them with zero length.
_POINT_EVENTS: Final[tuple[str, ...]] = (
    "State-changed",
    "Id-changed",
    "Role-changed",
    "CallMode-changed",
    "IsMuted-changed",
    "IsIncomingAudioMuted-changed",
    "OptimalVideoCount-changed",
    "SelectedDevice-changed",
    "SelectedMicrophoneChanged",
    "SelectedSpeakerChanged",
    "PageHidden",
)


def _all_ops() -> dict[str, OpSpec]:
    ops = _ops()
    for name in _POINT_EVENTS:
        ops[name] = OpSpec(0, fail=0.0, payload="event")
    return ops


@dataclass(frozen=True)
class VersionSpec:
    """One SDK build in the population.

    ``release_h`` is hours after the simulation start (negative: released before it; ``None``:
    released at the scenario's rollout time). Its unnormalised share at time ``t`` is
    ``weight * adoption(t) * decay(t)``: adoption is a logistic ramp of width ``ramp_h`` centred
    ``3 * ramp_h`` after release (starting from 0), decay halves every ``half_life_h`` hours (``None``: no decay),
    and the share is 0 after ``retire_h``. Shares are normalised per platform.
    """

    platform: str  # Web | Android | iOS | Windows (OperationPayload.SdkPlatform)
    sdk_version: str  # as written in SdkVersion
    ua_version: str  # as written in UserAgent
    weight: float
    release_h: float | None = -2000.0
    ramp_h: float = 10.0
    half_life_h: float | None = None
    retire_h: float | None = None
    latency_factor: float = 1.0


def _versions() -> tuple[VersionSpec, ...]:
    return (
        # Web: an old GA decaying and retired mid-week, the current GA, the new GA rolled out by
        # the scenario (release_h None) with the same-day beta of the next minor.
        VersionSpec("Web", "1.38.1.0_stable", "1.38.1", 0.30, half_life_h=72.0, retire_h=None),
        VersionSpec("Web", "1.37.2.0_stable", "1.37.2", 0.06, half_life_h=36.0, retire_h=110.0),
        VersionSpec("Web", "1.39.1.0_stable", "1.39.1", 0.64, latency_factor=0.97),
        VersionSpec("Web", "1.40.1.0_stable", "1.40.1", 1.6, release_h=None, ramp_h=10.0),
        VersionSpec("Web", "1.41.1.1_beta", "1.41.1-beta.1", 0.04, release_h=None, ramp_h=6.0),
        VersionSpec("Android", "2.13.0", "2.13.0", 0.7, latency_factor=1.03),
        VersionSpec("Android", "2.12.1", "2.12.1", 0.3, half_life_h=96.0),
        VersionSpec("Android", "2.14.0", "2.14.0", 0.8, release_h=30.0, ramp_h=14.0),
        VersionSpec("iOS", "2.13.1", "2.13.1", 0.8),
        VersionSpec("iOS", "2.12.0", "2.12.0", 0.2, half_life_h=120.0),
        VersionSpec("Windows", "1.11.0", "1.11.0", 1.0),
    )


@dataclass(frozen=True)
class LagComponent:
    """One log-normal component of the ingestion lag ``TimeGenerated - CallClientTimeStamp``."""

    weight: float
    median_s: float
    sigma: float


@dataclass(frozen=True)
class QuirkRates:
    """Rates of the data-shape quirks of reference §6 (fractions of rows unless noted)."""

    string_numbers: float = 0.01  # DurationMs/ResultSignature as JSON strings (JSON formats)
    invalid_payload: float = 0.002  # OperationPayload with unescaped quotes (not valid JSON)
    lowercase_event: float = 0.08  # of point events: 'state-changed' instead of 'State-changed'
    duplicate: float = 0.002  # exact copies ingested again with a later TimeGenerated
    empty_ids: float = 0.005  # in-call rows with empty CallId and ParticipantId
    agent_init_without_call: float = 0.8  # of CallAgentInit rows: no CallId/ParticipantId
    empty_operation_name: float = 0.0005
    pseudo_operation: float = 0.0005  # OperationName == 'CallClientOperations'
    empty_operation_id: float = 0.0003
    null_duration: float = 0.0005  # of non-point rows: DurationMs empty
    null_timestamp: float = 0.0001  # CallClientTimeStamp empty
    subcode_as_string: float = 0.1  # of payloads with a SubCode: "41048" instead of 41048
    camel_case_keys: float = 0.3  # streamType / diagnosticChanged / 'good' spellings
    legacy_success: float = 0.03  # of successes: 'Success' instead of 'Succeeded'
    legacy_failed: float = 0.03  # of failures: 'Failed'
    legacy_expected: float = 0.1  # of expected errors: 'ExpectedClientError'


@dataclass(frozen=True)
class SimParams:
    """All simulator parameters (rates, mix, volumes). Frozen: derive variants with ``replace``.

    ``calls_per_hour`` is the number of call legs per hour averaged over a week; each leg
    writes ~20 rows with the default mix, so 100 legs/h gives ~340,000 rows for 7 days.
    """

    calls_per_hour: float = 100.0
    #: Legs per day on the rare SDK version, independent of ``calls_per_hour`` so it stays rare.
    rare_legs_per_day: float = 20.0
    rare_version: VersionSpec = VersionSpec("Web", "1.35.1.0_stable", "1.35.1", 0.0)
    weekend_factor: float = 0.35
    night_factor: float = 0.12
    #: Business hours (UTC) of the weekday peak; the profile ramps up and down around them.
    peak_hours: tuple[float, float] = (8.0, 17.0)
    daily_jitter: float = 0.05  # day-to-day variation of the traffic level (sd, relative)
    load_latency: float = 0.05  # latency grows by this fraction at peak load vs the mean
    platform_mix: tuple[tuple[str, float], ...] = (
        ("Web", 0.6),
        ("Android", 0.2),
        ("iOS", 0.15),
        ("Windows", 0.05),
    )
    platform_latency: tuple[tuple[str, float], ...] = (
        ("Web", 1.0),
        ("Android", 1.15),
        ("iOS", 0.93),
        ("Windows", 1.06),
    )
    versions: tuple[VersionSpec, ...] = field(default_factory=_versions)
    ops: dict[str, OpSpec] = field(default_factory=_all_ops)
    #: Share of legs by how they start; incoming legs get a HandleIncomingCall first.
    start_mix: tuple[tuple[str, float], ...] = (
        ("Join", 0.5),
        ("StartCall", 0.3),
        ("AcceptIncomingCall", 0.18),
        ("RejectIncomingCall", 0.02),
    )
    group_call_share: float = 0.7  # CallType 'Group' vs '1 to 1' (Join is always Group)
    agent_init_per_leg: float = 0.9  # a reused CallAgent writes no CallAgentInit
    #: Expected counts per connected leg (Poisson unless named in ``bernoulli_ops``).
    leg_mix: tuple[tuple[str, float], ...] = (
        ("AskDevicePermission", 0.4),
        ("State-changed", 3.4),
        ("Id-changed", 1.0),
        ("Role-changed", 0.1),
        ("CallMode-changed", 0.02),
        ("MuteMicrophone", 1.2),  # each followed by UnmuteMicrophone (90 %)
        ("StartVideo", 0.55),  # each followed by StopVideo
        ("SwitchSource", 0.05),
        ("CreateView", 2.8),  # each followed by DisposeView (95 %)
        ("StartScreenShare", 0.06),  # each followed by StopScreenShare
        ("OptimalVideoCount-changed", 0.5),
        ("SelectedDevice-changed", 0.05),
        ("SelectedMicrophoneChanged", 0.05),
        ("SelectedSpeakerChanged", 0.05),
        ("IsIncomingAudioMuted-changed", 0.03),
        ("PageHidden", 0.3),  # web only
        ("UserFacingDiagnostics", 0.35),  # a bad UFD, recovered by a good one (90 %)
    )
    bernoulli_ops: frozenset[str] = frozenset(
        {"AskDevicePermission", "Id-changed", "Role-changed", "CallMode-changed", "SwitchSource"}
    )
    hangup_share: float = 0.93  # else Drop (3 %) or nothing at all (client crash)
    drop_share: float = 0.03
    leg_minutes_median: float = 12.0
    leg_minutes_sigma: float = 0.8
    tail_share: float = 0.02  # slow outliers: duration times ~e^1 on top of the log-normal
    #: UFDs: names and kind ('network' -> Good/Poor/Bad; 'flag' -> encoded per ufd_flag_encoding).
    ufd_names: tuple[tuple[str, str, float], ...] = (
        ("networkReceiveQuality", "network", 0.3),
        ("networkSendQuality", "network", 0.2),
        ("networkReconnect", "network", 0.1),
        ("cameraFreeze", "flag", 0.1),
        ("microphoneNotFunctioning", "flag", 0.08),
        ("speakingWhileMicrophoneIsMuted", "flag", 0.12),
        ("noSpeakerDevicesEnumerated", "flag", 0.04),
        ("cameraStartFailed", "flag", 0.03),
        ("speakerMuted", "flag", 0.03),
    )
    #: How flag-type UFDs are written (unknown, reference §1.7): 'quality' (Bad/Good like network
    #: UFDs) or 'value' (DiagnosticValue true/false).
    ufd_flag_encoding: str = "quality"
    ufd_recovery: float = 0.9
    lag: tuple[LagComponent, ...] = (
        LagComponent(0.84, 240.0, 0.6),  # minutes: the usual 3-10 min
        LagComponent(0.13, 1800.0, 0.8),  # tens of minutes
        LagComponent(0.03, 3 * 3600.0, 0.5),  # hours: most of these are > 2 h late
    )
    duplicate_extra_lag_s: float = 1800.0  # median extra delay of the second copy
    quirks: QuirkRates = field(default_factory=QuirkRates)
    warmup_days: float = 3.0  # clean history before the first incident
    # slow_drift is labelled where its factor exceeds this: where the drift becomes a practically
    # significant incident by the engine's default (DetectionPolicy.min_duration_rel, +20 %),
    # which is how the quality targets define an incident. (It was 1.5: alerts at +20-50 %,
    # correct by the product's own threshold, then counted as false.)
    drift_label_threshold: float = 1.2
    tenant_id: str = "4f1c2b9e-7a3d-4e8b-9c21-6d5e0a7b3f10"
    subscription_id: str = "8a2c6e1f-3b7d-4c9a-a1e5-2f4d6b8c0e93"
    resource_group: str = "acs-demo-rg"
    resource_name: str = "acs-demo"
    client_tag: str = "904f0b1d-7c6c-4c6d-a5b1-5e6e3b2d69d7"
    max_legs_per_chunk: int = 2500  # bounds memory: an hour is generated in parts of this size


def check_params(p: SimParams) -> list[str]:
    """Every problem with ``p`` (empty when usable), so all are reported at once."""
    problems: list[str] = []
    named = [n for n, _ in p.start_mix] + [n for n, _ in p.leg_mix] + list(REQUIRED_OPS)
    problems += [f"ops: no OpSpec for {n!r}" for n in dict.fromkeys(named) if n not in p.ops]
    platforms = {n for n, _ in p.platform_mix}
    for v in (*p.versions, p.rare_version):
        if v.platform not in platforms:
            problems.append(
                f"versions: {v.sdk_version} has platform {v.platform!r} not in platform_mix"
            )
    for name, _ in p.start_mix:
        if name not in ("Join", "StartCall", "AcceptIncomingCall", "RejectIncomingCall"):
            problems.append(f"start_mix: {name!r} is not a way to start a call leg")
    if p.ufd_flag_encoding not in ("quality", "value"):
        problems.append("ufd_flag_encoding: must be 'quality' or 'value'")
    if p.calls_per_hour < 0 or p.rare_legs_per_day < 0:
        problems.append("calls_per_hour and rare_legs_per_day must be >= 0")
    if p.max_legs_per_chunk < 1:
        problems.append("max_legs_per_chunk must be >= 1")
    for name, rate in vars(p.quirks).items():
        if not 0.0 <= rate <= 1.0:
            problems.append(f"quirks.{name}: {rate} is not a rate in [0, 1]")
    if p.hangup_share + p.drop_share > 1.0:
        problems.append("hangup_share + drop_share must be <= 1")
    return problems
