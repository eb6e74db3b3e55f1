"""Say who answers over gRPC too: every response starts with the service's version.

A server interceptor sends ``x-letraz-version`` as initial metadata on every call (the
report, the standard health ``Check`` and ``Watch``, reflection): the gRPC face of the
HTTP header ``X-Letraz-Version``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from letraz.version import SERVICE_VERSION

VERSION_METADATA_KEY = "x-letraz-version"

if TYPE_CHECKING:  # generic in the stubs only
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


class VersionMetadataInterceptor(_Interceptor):
    def __init__(self, version: str = SERVICE_VERSION) -> None:
        self._metadata = ((VERSION_METADATA_KEY, version),)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Handler | None], details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None:
            return None
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._first(handler.unary_unary), **codecs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._first(handler.stream_unary), **codecs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._first_streaming(handler.unary_stream), **codecs)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(self._first_streaming(handler.stream_stream), **codecs)
        return handler

    def _first(
        self, behaviour: Callable[[Any, grpc.ServicerContext], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def answer(request: Any, context: grpc.ServicerContext) -> Any:
            context.send_initial_metadata(self._metadata)
            return behaviour(request, context)

        return answer

    def _first_streaming(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        if getattr(behaviour, "experimental_non_blocking", False):
            # grpcio calls a non-blocking behaviour (the health servicer's Watch) with a
            # send_response_callback and never iterates its result: keep that contract,
            # or Watch falls back to a blocking generator that shutdown cannot end.
            def sends(request: Any, context: grpc.ServicerContext, send_response_callback: Any) -> Any:
                context.send_initial_metadata(self._metadata)
                return behaviour(request, context, send_response_callback)

            sends.experimental_non_blocking = True  # type: ignore[attr-defined]
            return sends

        def answers(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            context.send_initial_metadata(self._metadata)
            yield from behaviour(request, context)

        return answers
