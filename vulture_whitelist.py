"""Names `make deadcode` (vulture) cannot see used, each with who uses it.

This file is parsed by vulture, never imported. Add a name here only when a
framework or a caller outside wasmxds/ uses it; dead code is deleted instead.
"""

import wasmtime
from envoy.config.core.v3 import base_pb2, config_source_pb2
from google.protobuf import struct_pb2

from wasmxds.api.templates import Direction
from wasmxds.cli.migrate import _Dumper
from wasmxds.debounce.debouncer import Debouncer
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.oci import tarlayer
from wasmxds.modules.oci.push import PushLayout
from wasmxds.modules.purge import PurgeReport
from wasmxds.modules.slots import PullSlots
from wasmxds.modules.types import Pending
from wasmxds.rollout.engine import Rollouts
from wasmxds.settings import ModuleDelivery
from wasmxds.sources.kube import client
from wasmxds.sources.kubernetes import KubernetesSource
from wasmxds.supervisor import Supervisor
from wasmxds.xds.snapshot import Snapshot

# Protobuf fields set by assignment (envoy and struct messages).
struct_pb2.Value.null_value
base_pb2.DataSource.inline_bytes
config_source_pb2.ConfigSource.resource_api_version
# A library reads it: kubernetes_asyncio's ApiClient sends it as User-Agent.
client.KubeClient.user_agent
# Called by frameworks: PyYAML's representer, io's buffered readers.
_Dumper.ignore_aliases
tarlayer._Bounded.readable
tarlayer._BoundedGunzip.readable
# Enum members chosen by value (from settings, YAML or flags), never by name.
Direction.OUTBOUND
ModuleDelivery.LOCAL
PushLayout.COMPAT
# Observation points read by tests (tests/) and benchmarks (benchmarks/).
Debouncer.merged_events
ModuleIndex.flush_sync
PullSlots.waiting
PurgeReport.kept_bytes
Pending.started_at
KubernetesSource.reflectors
Supervisor.stopping
Snapshot.memoized_classes
Snapshot.memoized_positions
Snapshot.shared_responses
# The staged-rollout operator API: /debug/rollouts and `wasmxds rollout ...` (admin), tests.
Rollouts.views
Rollouts.pause
Rollouts.promote
# A library reads it: wasmtime's Config applies each setter property to the engine.
wasmtime.Config.parallel_compilation
