"""The source for a SyncSpec."""

from upsync.config.upsync import SyncSpec
from upsync.sources.base import Source
from upsync.sources.consul import ConsulSource
from upsync.sources.etcd_v2 import EtcdV2Source
from upsync.sources.etcd_v3 import EtcdV3Source
from upsync.sources.file import FileSource


def make_source(spec: SyncSpec, upstream: str) -> Source:
    if spec.kind == "etcd":
        return EtcdV2Source(spec, upstream)
    if spec.kind == "etcdv3":
        return EtcdV3Source(spec, upstream)
    if spec.kind == "file":
        return FileSource(spec, upstream)
    return ConsulSource(spec, upstream)
