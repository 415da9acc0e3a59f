"""The PrivacyService servicer (issue 22): translates only; the work is ``application/privacy.Privacy``'s. An
erasure runs on the read pool (it waits for its command's batch, shreds a key and rewrites read-model rows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from leeway.v1 import privacy_pb2, privacy_pb2_grpc

from ..application.commands.privacy import ErasureResult
from ..application.privacy import Privacy, export_json
from ..observability import Metrics
from . import convert
from .authz import current_deadline, current_principal
from .front import Front
from .servicers import rpc


def _erasure(result: ErasureResult) -> privacy_pb2.Erasure:
    return privacy_pb2.Erasure(
        subject=result.subject, pseudonym=result.pseudonym, erase_time=convert.time_to_proto(result.at)
    )


class PrivacyServicer(privacy_pb2_grpc.PrivacyServiceServicer):
    service = "leeway.v1.PrivacyService"

    def __init__(self, front: Front, privacy: Privacy, metrics: Metrics | None = None):
        self.read = front.read
        self.privacy = privacy
        self.metrics = metrics

    async def _erase(self, erase: Callable[..., ErasureResult], subject: str, request: Any) -> privacy_pb2.Erasure:
        """One erasure (``erase``: of a customer or an employee) by the calling principal, within its deadline."""
        result = await self.read(
            erase, request.request_id, subject, request.reason,
            actor=current_principal.get().id, deadline=current_deadline.get(),
        )  # fmt: skip
        return _erasure(result)

    @rpc
    async def EraseCustomer(self, request: privacy_pb2.EraseCustomerRequest, context: grpc.aio.ServicerContext) -> Any:
        erasure = await self._erase(self.privacy.erase_customer, request.customer_id, request)
        return privacy_pb2.EraseCustomerResponse(erasure=erasure)

    @rpc
    async def EraseEmployee(self, request: privacy_pb2.EraseEmployeeRequest, context: grpc.aio.ServicerContext) -> Any:
        erasure = await self._erase(self.privacy.erase_employee, request.employee_id, request)
        return privacy_pb2.EraseEmployeeResponse(erasure=erasure)

    @rpc
    async def ExportCustomerData(
        self, request: privacy_pb2.ExportCustomerDataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        document, token = await self.read(
            self.privacy.export_customer, request.customer_id, request.page_size, request.page_token
        )
        return privacy_pb2.ExportCustomerDataResponse(document=export_json(document), next_page_token=token)


    @rpc
    async def RedactLegacyData(
        self, request: privacy_pb2.RedactLegacyDataRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        result = await self.read(
            self.privacy.redact_legacy, request.request_id, request.reason, customer_id=request.customer_id,
            employee_id=request.employee_id, actor=current_principal.get().id, deadline=current_deadline.get(),
        )
        return privacy_pb2.RedactLegacyDataResponse(redaction=privacy_pb2.LegacyRedaction(
            subject=result.subject, pseudonym=result.pseudonym, redact_time=convert.time_to_proto(result.at),
            redacted_event_count=result.events,
        ))  # fmt: skip


def add_privacy_service(
    server: grpc.aio.Server, front: Front, privacy: Privacy, metrics: Metrics | None
) -> dict[str, PrivacyServicer]:
    """Adds the PrivacyService to the gRPC server; returns it by service name (the HTTP front serves it too)."""
    servicer = PrivacyServicer(front, privacy, metrics)
    privacy_pb2_grpc.add_PrivacyServiceServicer_to_server(servicer, server)
    return {privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name: servicer}


SERVICE_NAME = privacy_pb2.DESCRIPTOR.services_by_name["PrivacyService"].full_name
