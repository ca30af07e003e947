from loopwise.v1 import events_pb2 as _events_pb2
from loopwise.v1 import features_pb2 as _features_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LabelSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_SOURCE_UNSPECIFIED: _ClassVar[LabelSource]
    LABEL_SOURCE_NO_FEEDBACK: _ClassVar[LabelSource]
    LABEL_SOURCE_CLICK: _ClassVar[LabelSource]
    LABEL_SOURCE_ACCEPT: _ClassVar[LabelSource]
    LABEL_SOURCE_REJECT: _ClassVar[LabelSource]

class FeedbackMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_MODE_UNSPECIFIED: _ClassVar[FeedbackMode]
    FEEDBACK_MODE_WINDOW: _ClassVar[FeedbackMode]
    FEEDBACK_MODE_FAKE_NEGATIVE: _ClassVar[FeedbackMode]
LABEL_SOURCE_UNSPECIFIED: LabelSource
LABEL_SOURCE_NO_FEEDBACK: LabelSource
LABEL_SOURCE_CLICK: LabelSource
LABEL_SOURCE_ACCEPT: LabelSource
LABEL_SOURCE_REJECT: LabelSource
FEEDBACK_MODE_UNSPECIFIED: FeedbackMode
FEEDBACK_MODE_WINDOW: FeedbackMode
FEEDBACK_MODE_FAKE_NEGATIVE: FeedbackMode

class Example(_message.Message):
    __slots__ = ("example_id", "tenant", "user_id", "session_id", "request_id", "candidate_id", "label", "source", "weight", "propensity", "position_propensity", "exposure_propensity", "logged_propensity", "position", "served_score", "model", "version", "impression_time_ms", "label_time_ms", "user", "context", "candidate", "correction", "feedback_mode", "click_weight")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    POSITION_PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    EXPOSURE_PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    LOGGED_PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SERVED_SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMPRESSION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    LABEL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_MODE_FIELD_NUMBER: _ClassVar[int]
    CLICK_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    example_id: str
    tenant: str
    user_id: str
    session_id: str
    request_id: str
    candidate_id: str
    label: float
    source: LabelSource
    weight: float
    propensity: float
    position_propensity: float
    exposure_propensity: float
    logged_propensity: float
    position: int
    served_score: float
    model: str
    version: str
    impression_time_ms: int
    label_time_ms: int
    user: _features_pb2.Features
    context: _features_pb2.Features
    candidate: _features_pb2.Features
    correction: bool
    feedback_mode: FeedbackMode
    click_weight: float
    def __init__(self, example_id: _Optional[str] = ..., tenant: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., request_id: _Optional[str] = ..., candidate_id: _Optional[str] = ..., label: _Optional[float] = ..., source: _Optional[_Union[LabelSource, str]] = ..., weight: _Optional[float] = ..., propensity: _Optional[float] = ..., position_propensity: _Optional[float] = ..., exposure_propensity: _Optional[float] = ..., logged_propensity: _Optional[float] = ..., position: _Optional[int] = ..., served_score: _Optional[float] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., impression_time_ms: _Optional[int] = ..., label_time_ms: _Optional[int] = ..., user: _Optional[_Union[_features_pb2.Features, _Mapping]] = ..., context: _Optional[_Union[_features_pb2.Features, _Mapping]] = ..., candidate: _Optional[_Union[_features_pb2.Features, _Mapping]] = ..., correction: _Optional[bool] = ..., feedback_mode: _Optional[_Union[FeedbackMode, str]] = ..., click_weight: _Optional[float] = ...) -> None: ...

class PreferencePair(_message.Message):
    __slots__ = ("pair_id", "tenant", "user_id", "request_id", "preferred_id", "other_id", "preferred_position", "other_position", "strength", "kind", "model", "version", "time_ms", "user", "context", "preferred", "other")
    PAIR_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_ID_FIELD_NUMBER: _ClassVar[int]
    OTHER_ID_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_POSITION_FIELD_NUMBER: _ClassVar[int]
    OTHER_POSITION_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_FIELD_NUMBER: _ClassVar[int]
    OTHER_FIELD_NUMBER: _ClassVar[int]
    pair_id: str
    tenant: str
    user_id: str
    request_id: str
    preferred_id: str
    other_id: str
    preferred_position: int
    other_position: int
    strength: float
    kind: str
    model: str
    version: str
    time_ms: int
    user: _features_pb2.Features
    context: _features_pb2.Features
    preferred: _features_pb2.Features
    other: _features_pb2.Features
    def __init__(self, pair_id: _Optional[str] = ..., tenant: _Optional[str] = ..., user_id: _Optional[str] = ..., request_id: _Optional[str] = ..., preferred_id: _Optional[str] = ..., other_id: _Optional[str] = ..., preferred_position: _Optional[int] = ..., other_position: _Optional[int] = ..., strength: _Optional[float] = ..., kind: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., time_ms: _Optional[int] = ..., user: _Optional[_Union[_features_pb2.Features, _Mapping]] = ..., context: _Optional[_Union[_features_pb2.Features, _Mapping]] = ..., preferred: _Optional[_Union[_features_pb2.Features, _Mapping]] = ..., other: _Optional[_Union[_features_pb2.Features, _Mapping]] = ...) -> None: ...

class PredictionError(_message.Message):
    __slots__ = ("error_id", "tenant", "user_id", "request_id", "candidate_id", "label", "served_score", "key", "model", "version", "time_ms")
    ERROR_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SERVED_SCORE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    error_id: str
    tenant: str
    user_id: str
    request_id: str
    candidate_id: str
    label: float
    served_score: float
    key: _containers.RepeatedScalarFieldContainer[float]
    model: str
    version: str
    time_ms: int
    def __init__(self, error_id: _Optional[str] = ..., tenant: _Optional[str] = ..., user_id: _Optional[str] = ..., request_id: _Optional[str] = ..., candidate_id: _Optional[str] = ..., label: _Optional[float] = ..., served_score: _Optional[float] = ..., key: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., time_ms: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("topic", "partition", "offset", "reason", "detail", "payload", "time_ms", "service")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    payload: bytes
    time_ms: int
    service: str
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., payload: _Optional[bytes] = ..., time_ms: _Optional[int] = ..., service: _Optional[str] = ...) -> None: ...

class AttributionState(_message.Message):
    __slots__ = ("impression", "feedback", "deadline_ms", "closed", "expires_ms", "emitted", "handled", "partition", "feedback_mode")
    IMPRESSION_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    EMITTED_FIELD_NUMBER: _ClassVar[int]
    HANDLED_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_MODE_FIELD_NUMBER: _ClassVar[int]
    impression: _events_pb2.Event
    feedback: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    deadline_ms: int
    closed: bool
    expires_ms: int
    emitted: _containers.RepeatedScalarFieldContainer[str]
    handled: _containers.RepeatedScalarFieldContainer[str]
    partition: int
    feedback_mode: FeedbackMode
    def __init__(self, impression: _Optional[_Union[_events_pb2.Event, _Mapping]] = ..., feedback: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ..., deadline_ms: _Optional[int] = ..., closed: _Optional[bool] = ..., expires_ms: _Optional[int] = ..., emitted: _Optional[_Iterable[str]] = ..., handled: _Optional[_Iterable[str]] = ..., partition: _Optional[int] = ..., feedback_mode: _Optional[_Union[FeedbackMode, str]] = ...) -> None: ...

class ModelAnnouncement(_message.Message):
    __slots__ = ("event_id", "tenant", "model", "version", "previous_version", "action", "reason", "metrics", "time_ms")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    tenant: str
    model: str
    version: str
    previous_version: str
    action: str
    reason: str
    metrics: _containers.ScalarMap[str, float]
    time_ms: int
    def __init__(self, event_id: _Optional[str] = ..., tenant: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., previous_version: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., time_ms: _Optional[int] = ...) -> None: ...

class RewriteRuleRecord(_message.Message):
    __slots__ = ("event_id", "tenant", "rule_id", "source", "target", "rewrite", "support", "confidence", "source_success", "target_success", "action", "reason", "time_ms", "success_after", "turns_after", "kind", "canary_share", "canary_success", "control_success", "canary_turns", "control_turns")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REWRITE_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    TARGET_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_AFTER_FIELD_NUMBER: _ClassVar[int]
    TURNS_AFTER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    CANARY_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    CANARY_TURNS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_TURNS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    tenant: str
    rule_id: str
    source: str
    target: str
    rewrite: str
    support: int
    confidence: float
    source_success: float
    target_success: float
    action: str
    reason: str
    time_ms: int
    success_after: float
    turns_after: int
    kind: str
    canary_share: float
    canary_success: float
    control_success: float
    canary_turns: int
    control_turns: int
    def __init__(self, event_id: _Optional[str] = ..., tenant: _Optional[str] = ..., rule_id: _Optional[str] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., rewrite: _Optional[str] = ..., support: _Optional[int] = ..., confidence: _Optional[float] = ..., source_success: _Optional[float] = ..., target_success: _Optional[float] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., time_ms: _Optional[int] = ..., success_after: _Optional[float] = ..., turns_after: _Optional[int] = ..., kind: _Optional[str] = ..., canary_share: _Optional[float] = ..., canary_success: _Optional[float] = ..., control_success: _Optional[float] = ..., canary_turns: _Optional[int] = ..., control_turns: _Optional[int] = ...) -> None: ...

class SparseRows(_message.Message):
    __slots__ = ("table", "ids", "values", "dim")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    table: str
    ids: bytes
    values: bytes
    dim: int
    def __init__(self, table: _Optional[str] = ..., ids: _Optional[bytes] = ..., values: _Optional[bytes] = ..., dim: _Optional[int] = ...) -> None: ...

class SparseDelta(_message.Message):
    __slots__ = ("event_id", "tenant", "model", "base_version", "stream", "sequence", "created_ms", "first_example_ms", "last_example_ms", "examples", "tables", "buckets", "fm_dim", "linear", "cross_a", "cross_b", "cross_buckets", "impressions_through_ms")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_EXAMPLE_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_EXAMPLE_MS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    FM_DIM_FIELD_NUMBER: _ClassVar[int]
    LINEAR_FIELD_NUMBER: _ClassVar[int]
    CROSS_A_FIELD_NUMBER: _ClassVar[int]
    CROSS_B_FIELD_NUMBER: _ClassVar[int]
    CROSS_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_THROUGH_MS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    tenant: str
    model: str
    base_version: str
    stream: str
    sequence: int
    created_ms: int
    first_example_ms: int
    last_example_ms: int
    examples: int
    tables: _containers.RepeatedCompositeFieldContainer[SparseRows]
    buckets: int
    fm_dim: int
    linear: bool
    cross_a: _containers.RepeatedScalarFieldContainer[int]
    cross_b: _containers.RepeatedScalarFieldContainer[int]
    cross_buckets: int
    impressions_through_ms: int
    def __init__(self, event_id: _Optional[str] = ..., tenant: _Optional[str] = ..., model: _Optional[str] = ..., base_version: _Optional[str] = ..., stream: _Optional[str] = ..., sequence: _Optional[int] = ..., created_ms: _Optional[int] = ..., first_example_ms: _Optional[int] = ..., last_example_ms: _Optional[int] = ..., examples: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[SparseRows, _Mapping]]] = ..., buckets: _Optional[int] = ..., fm_dim: _Optional[int] = ..., linear: _Optional[bool] = ..., cross_a: _Optional[_Iterable[int]] = ..., cross_b: _Optional[_Iterable[int]] = ..., cross_buckets: _Optional[int] = ..., impressions_through_ms: _Optional[int] = ...) -> None: ...
