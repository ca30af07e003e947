from loopwise.v1 import features_pb2 as _features_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("tenant", "model", "request_id", "user_id", "session_id", "user", "context", "candidates")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    model: str
    request_id: str
    user_id: str
    session_id: str
    user: _features_pb2.Features
    context: _features_pb2.Features
    candidates: _features_pb2.Candidates
    def __init__(self, tenant: _Optional[str] = ..., model: _Optional[str] = ..., request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., user: _Optional[_Union[_features_pb2.Features, _Mapping]] = ..., context: _Optional[_Union[_features_pb2.Features, _Mapping]] = ..., candidates: _Optional[_Union[_features_pb2.Candidates, _Mapping]] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("request_id", "model", "version", "scores", "ranking", "base_scores", "compensated_scores", "memory_mode", "delta_sequence")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    BASE_SCORES_FIELD_NUMBER: _ClassVar[int]
    COMPENSATED_SCORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MODE_FIELD_NUMBER: _ClassVar[int]
    DELTA_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    version: str
    scores: _containers.RepeatedScalarFieldContainer[float]
    ranking: _containers.RepeatedScalarFieldContainer[int]
    base_scores: _containers.RepeatedScalarFieldContainer[float]
    compensated_scores: _containers.RepeatedScalarFieldContainer[float]
    memory_mode: str
    delta_sequence: int
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., scores: _Optional[_Iterable[float]] = ..., ranking: _Optional[_Iterable[int]] = ..., base_scores: _Optional[_Iterable[float]] = ..., compensated_scores: _Optional[_Iterable[float]] = ..., memory_mode: _Optional[str] = ..., delta_sequence: _Optional[int] = ...) -> None: ...

class RewriteRequest(_message.Message):
    __slots__ = ("tenant", "utterance", "user_id", "session_id", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    utterance: str
    user_id: str
    session_id: str
    context: _containers.ScalarMap[str, str]
    def __init__(self, tenant: _Optional[str] = ..., utterance: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RewriteResponse(_message.Message):
    __slots__ = ("rewritten", "utterance", "confidence", "rule_id", "kind", "spans")
    REWRITTEN_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    rewritten: bool
    utterance: str
    confidence: float
    rule_id: str
    kind: str
    spans: _containers.RepeatedCompositeFieldContainer[RewrittenSpan]
    def __init__(self, rewritten: _Optional[bool] = ..., utterance: _Optional[str] = ..., confidence: _Optional[float] = ..., rule_id: _Optional[str] = ..., kind: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[RewrittenSpan, _Mapping]]] = ...) -> None: ...

class RewrittenSpan(_message.Message):
    __slots__ = ("start", "end", "original", "rule_id")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    original: str
    rule_id: str
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., original: _Optional[str] = ..., rule_id: _Optional[str] = ...) -> None: ...
