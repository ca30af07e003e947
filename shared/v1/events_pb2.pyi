from loopwise.v1 import features_pb2 as _features_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResponseStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESPONSE_STATUS_UNSPECIFIED: _ClassVar[ResponseStatus]
    RESPONSE_STATUS_OK: _ClassVar[ResponseStatus]
    RESPONSE_STATUS_UNHANDLED: _ClassVar[ResponseStatus]
    RESPONSE_STATUS_ERROR: _ClassVar[ResponseStatus]
    RESPONSE_STATUS_CANCELLED: _ClassVar[ResponseStatus]
RESPONSE_STATUS_UNSPECIFIED: ResponseStatus
RESPONSE_STATUS_OK: ResponseStatus
RESPONSE_STATUS_UNHANDLED: ResponseStatus
RESPONSE_STATUS_ERROR: ResponseStatus
RESPONSE_STATUS_CANCELLED: ResponseStatus

class Event(_message.Message):
    __slots__ = ("event_id", "tenant", "user_id", "session_id", "request_id", "client_time_ms", "received_time_ms", "impression", "click", "accept", "reject", "turn")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    IMPRESSION_FIELD_NUMBER: _ClassVar[int]
    CLICK_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    tenant: str
    user_id: str
    session_id: str
    request_id: str
    client_time_ms: int
    received_time_ms: int
    impression: Impression
    click: Click
    accept: Accept
    reject: Reject
    turn: Turn
    def __init__(self, event_id: _Optional[str] = ..., tenant: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., request_id: _Optional[str] = ..., client_time_ms: _Optional[int] = ..., received_time_ms: _Optional[int] = ..., impression: _Optional[_Union[Impression, _Mapping]] = ..., click: _Optional[_Union[Click, _Mapping]] = ..., accept: _Optional[_Union[Accept, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ..., turn: _Optional[_Union[Turn, _Mapping]] = ...) -> None: ...

class Impression(_message.Message):
    __slots__ = ("model", "version", "candidate_ids", "scores", "user", "context", "candidates", "features_ref", "propensities", "source", "ranking", "representation", "representation_dim", "representation_scale", "base_scores", "compensated_scores", "delta_sequence")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_REF_FIELD_NUMBER: _ClassVar[int]
    PROPENSITIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATION_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATION_DIM_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATION_SCALE_FIELD_NUMBER: _ClassVar[int]
    BASE_SCORES_FIELD_NUMBER: _ClassVar[int]
    COMPENSATED_SCORES_FIELD_NUMBER: _ClassVar[int]
    DELTA_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    user: _features_pb2.Features
    context: _features_pb2.Features
    candidates: _features_pb2.Candidates
    features_ref: str
    propensities: _containers.RepeatedScalarFieldContainer[float]
    source: str
    ranking: _containers.RepeatedScalarFieldContainer[int]
    representation: bytes
    representation_dim: int
    representation_scale: _containers.RepeatedScalarFieldContainer[float]
    base_scores: _containers.RepeatedScalarFieldContainer[float]
    compensated_scores: _containers.RepeatedScalarFieldContainer[float]
    delta_sequence: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., candidate_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., user: _Optional[_Union[_features_pb2.Features, _Mapping]] = ..., context: _Optional[_Union[_features_pb2.Features, _Mapping]] = ..., candidates: _Optional[_Union[_features_pb2.Candidates, _Mapping]] = ..., features_ref: _Optional[str] = ..., propensities: _Optional[_Iterable[float]] = ..., source: _Optional[str] = ..., ranking: _Optional[_Iterable[int]] = ..., representation: _Optional[bytes] = ..., representation_dim: _Optional[int] = ..., representation_scale: _Optional[_Iterable[float]] = ..., base_scores: _Optional[_Iterable[float]] = ..., compensated_scores: _Optional[_Iterable[float]] = ..., delta_sequence: _Optional[int] = ...) -> None: ...

class Click(_message.Message):
    __slots__ = ("candidate_id", "position", "dwell_ms")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    DWELL_MS_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    position: int
    dwell_ms: int
    def __init__(self, candidate_id: _Optional[str] = ..., position: _Optional[int] = ..., dwell_ms: _Optional[int] = ...) -> None: ...

class Accept(_message.Message):
    __slots__ = ("candidate_id", "position")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    position: int
    def __init__(self, candidate_id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("candidate_id", "position", "reason")
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    position: int
    reason: str
    def __init__(self, candidate_id: _Optional[str] = ..., position: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Interpretation(_message.Message):
    __slots__ = ("domain", "intent", "slots")
    class SlotsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    domain: str
    intent: str
    slots: _containers.ScalarMap[str, str]
    def __init__(self, domain: _Optional[str] = ..., intent: _Optional[str] = ..., slots: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("utterance", "interpretation", "status", "barge_in", "latency_ms", "rewritten_utterance", "rewrite_rule_id", "explicit_reject")
    UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    INTERPRETATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BARGE_IN_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    REWRITTEN_UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    REWRITE_RULE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_REJECT_FIELD_NUMBER: _ClassVar[int]
    utterance: str
    interpretation: Interpretation
    status: ResponseStatus
    barge_in: bool
    latency_ms: int
    rewritten_utterance: str
    rewrite_rule_id: str
    explicit_reject: bool
    def __init__(self, utterance: _Optional[str] = ..., interpretation: _Optional[_Union[Interpretation, _Mapping]] = ..., status: _Optional[_Union[ResponseStatus, str]] = ..., barge_in: _Optional[bool] = ..., latency_ms: _Optional[int] = ..., rewritten_utterance: _Optional[str] = ..., rewrite_rule_id: _Optional[str] = ..., explicit_reject: _Optional[bool] = ...) -> None: ...
