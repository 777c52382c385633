"""The ganserve.v1.ModelAdmin service: list model versions and reload the repository."""

from __future__ import annotations

import grpc

from ganserve.serve.logs import request_id_metadata
from ganserve.serve.models import ModelManager, Status
from ganserve.v1 import admin_pb2, admin_pb2_grpc


def _status(s: Status) -> admin_pb2.ModelStatus:
    return admin_pb2.ModelStatus(
        name=s.name,
        version=s.version,
        state=s.state.value,
        message=s.message,
        backend=s.backend,
        precision=s.precision,
    )


class ModelAdminServicer(admin_pb2_grpc.ModelAdminServicer):
    """Operator RPCs over the ModelManager (behind the same auth as everything else)."""

    def __init__(self, models: ModelManager) -> None:
        self._models = models

    async def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListModelsResponse:
        context.set_trailing_metadata(request_id_metadata(context))
        return admin_pb2.ListModelsResponse(models=[_status(s) for s in self._models.statuses()])

    async def ReloadModels(
        self, request: admin_pb2.ReloadModelsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReloadModelsResponse:
        context.set_trailing_metadata(request_id_metadata(context))
        changes = await self._models.reload()
        return admin_pb2.ReloadModelsResponse(
            changes=[_status(s) for s in changes],
            models=[_status(s) for s in self._models.statuses()],
        )
