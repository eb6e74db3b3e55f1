from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HealthCheckResponse(_message.Message):
    __slots__ = ("instance_id", "status", "details")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    status: str
    details: HealthDetailsResponse
    def __init__(self, instance_id: _Optional[str] = ..., status: _Optional[str] = ..., details: _Optional[_Union[HealthDetailsResponse, _Mapping]] = ...) -> None: ...

class HealthDetailsResponse(_message.Message):
    __slots__ = ("sentry", "clerk", "db", "util_service")
    SENTRY_FIELD_NUMBER: _ClassVar[int]
    CLERK_FIELD_NUMBER: _ClassVar[int]
    DB_FIELD_NUMBER: _ClassVar[int]
    UTIL_SERVICE_FIELD_NUMBER: _ClassVar[int]
    sentry: str
    clerk: str
    db: str
    util_service: str
    def __init__(self, sentry: _Optional[str] = ..., clerk: _Optional[str] = ..., db: _Optional[str] = ..., util_service: _Optional[str] = ...) -> None: ...
