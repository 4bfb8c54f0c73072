"""One thin servicer per service: parse the request, call the domain (``eve.workflow``), convert
the result (``eve.api.convert``). Protobuf types stop here."""

from __future__ import annotations

import base64
import json

from eve.api import convert
from eve.core.errors import (
    ConfigError,
)
from eve.v1 import (
    endpoints_pb2,
    endpoints_pb2_grpc,
    interlays_pb2,
    interlays_pb2_grpc,
    workflows_pb2,
    workflows_pb2_grpc,
)
from eve.workflow.registry import Coordinator
from eve.workflow.runs import Workflow

__all__ = ["EndpointServicer", "InterlayServicer", "MigrationServicer"]


def _command(request: endpoints_pb2.CommandRequest) -> list[bytes | str]:
    if request.command and request.command_bytes:
        raise ConfigError("set command or command_bytes, not both", field="command")
    return list(request.command) or list(request.command_bytes)


class EndpointServicer(endpoints_pb2_grpc.EndpointServiceServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def CreateEndpoint(self, request, context):
        record = self.coordinator.create_endpoint(
            request.endpoint, request.kind, convert.message_to_dict(request.config), request.description)
        return convert.endpoint_to_proto(record)

    def GetEndpoint(self, request, context):
        return convert.endpoint_to_proto(self.coordinator.get_endpoint(request.endpoint))

    def ListEndpoints(self, request, context):
        return endpoints_pb2.ListEndpointsResponse(
            endpoints=[convert.endpoint_to_proto(r) for r in self.coordinator.list_endpoints()])

    def UpdateEndpoint(self, request, context):
        record = self.coordinator.update_endpoint(
            request.endpoint, request.kind, convert.message_to_dict(request.config), request.description)
        return convert.endpoint_to_proto(record)

    def DeleteEndpoint(self, request, context):
        self.coordinator.delete_endpoint(request.endpoint)
        return endpoints_pb2.DeleteEndpointResponse()

    def _call(self, request, context, run):
        # The command is bounded by the caller's deadline too, and its connection closed when
        # the caller goes (add_callback runs when the RPC ends, cancelled or not).
        result = run(request.endpoint, _command(request), db=request.db, timeout=request.timeout_seconds,
                     deadline=context.time_remaining(), on_abandon=context.add_callback)
        return endpoints_pb2.CommandResponse(
            reply=convert.resp_to_proto(result.reply), role=result.role, address=result.address)

    def Read(self, request, context):
        return self._call(request, context, self.coordinator.read)

    def Write(self, request, context):
        return self._call(request, context, self.coordinator.write)


class InterlayServicer(interlays_pb2_grpc.InterlayServiceServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def CreateInterlay(self, request, context):
        settings = convert.interlay_settings_to_dict(request.settings)
        record = self.coordinator.create_interlay(request.id, request.endpoint, request.port, settings)
        return convert.interlay_to_proto(record)

    def _interlay(self, record):
        status, stats = self.coordinator.interlay_status(record.id)
        return convert.interlay_to_proto(record, status, stats)

    def GetInterlay(self, request, context):
        return self._interlay(self.coordinator.get_interlay(request.id))

    def ListInterlays(self, request, context):
        return interlays_pb2.ListInterlaysResponse(
            interlays=[self._interlay(r) for r in self.coordinator.list_interlays()])

    def DeleteInterlay(self, request, context):
        self.coordinator.delete_interlay(request.id)
        return interlays_pb2.DeleteInterlayResponse()

    def StartInterlay(self, request, context):
        return self._interlay(self.coordinator.start_interlay(request.id))

    def StopInterlay(self, request, context):
        return self._interlay(self.coordinator.stop_interlay(request.id))


class MigrationServicer(workflows_pb2_grpc.MigrationServiceServicer):
    def __init__(self, workflow: Workflow) -> None:
        self.workflow = workflow

    def _run(self, record):
        return convert.run_to_proto(record, self.workflow.setup(record), self.workflow.store.traffic(record.id))

    def CreateRun(self, request, context):
        return self._run(self.workflow.create(request.id, request.description))

    def GetRun(self, request, context):
        return self._run(self.workflow.get(request.run))

    def ListRuns(self, request, context):
        return workflows_pb2.ListRunsResponse(runs=[self._run(r) for r in self.workflow.list()])

    def SubmitSetup(self, request, context):
        return self._run(self.workflow.submit_setup(request.run, convert.setup_from_proto(request.setup)))

    def Prepare(self, request, context):
        return self._run(self.workflow.prepare(request.run))

    def GetCompatibility(self, request, context):
        issues, compatible = self.workflow.compatibility(request.run)
        return workflows_pb2.CompatibilityReport(issues=[convert.issue_to_proto(i) for i in issues],
                                                 compatible=compatible)

    def AcknowledgeIssue(self, request, context):
        return convert.issue_to_proto(self.workflow.acknowledge(request.run, request.issue_id, request.notes))

    def GetAnalysis(self, request, context):
        return convert.analysis_to_proto(self.workflow.report(request.run, "analysis"))

    def GetTestRun(self, request, context):
        return convert.testrun_to_proto(self.workflow.report(request.run, "testrun"))

    def Approve(self, request, context):
        return self._run(self.workflow.approve(request.run, request.notes))

    def SubscribeEvents(self, request, context):
        for event in self.workflow.events(request.run, request.after_seq, is_active=context.is_active):
            yield convert.event_to_proto(request.run, event)

    def GetMetrics(self, request, context):
        return convert.metrics_to_proto(self.workflow.metrics(request.run))

    def ListErrorKeys(self, request, context):
        self.workflow.get(request.run)
        size = request.page_size if 0 < request.page_size <= 1000 else 100
        after = _decode_page_token(request.page_token) if request.page_token else None
        records = self.workflow.store.error_keys(request.run, limit=size + 1, after=after)
        token = ""
        if len(records) > size:
            records = records[:size]
            last = records[-1]
            token = _encode_page_token(last.db, last.key, last.node)
        return workflows_pb2.ListErrorKeysResponse(error_keys=[convert.error_key_to_proto(r) for r in records],
                                                   next_page_token=token)

    def ExportErrorKeys(self, request, context):
        from eve.bulk import error_keys

        self.workflow.get(request.run)
        fmt = "csv" if request.format == workflows_pb2.CSV else "jsonl"
        for chunk in error_keys.export(self.workflow.store.error_keys(request.run), fmt):
            if chunk:
                yield workflows_pb2.ExportChunk(data=chunk)

    def RetryErrorKeys(self, request, context):
        outcome = self.workflow.retry_error_keys(request.run, list(request.keys) or None)
        return workflows_pb2.RetryErrorKeysResponse(**outcome)

    def SetTraffic(self, request, context):
        return self._run(self.workflow.set_traffic(request.run, request.read_percent_target,
                                                   request.cutover_writes))

    def Verify(self, request, context):
        return convert.verify_to_proto(self.workflow.verify(request.run, request.ttl_tolerance_ms))

    def Complete(self, request, context):
        return self._run(self.workflow.complete(request.run, request.accept_differences, request.notes))

    def Rollback(self, request, context):
        return self._run(self.workflow.rollback(request.run, request.reason))

    def Cancel(self, request, context):
        return self._run(self.workflow.cancel(request.run, request.reason))


def _encode_page_token(db: int, key: bytes, node: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([db, base64.b64encode(key).decode(), node]).encode()).decode()


def _decode_page_token(token: str) -> tuple[int, bytes, str]:
    try:
        db, key, node = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(db), base64.b64decode(key), str(node)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ConfigError("not a page token from ListErrorKeys", field="page_token") from None
