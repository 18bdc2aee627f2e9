"""The upstream groups of the running configuration and the registry syncs that feed them, carried
across reloads: a group whose balancing method stays keeps its peers (failure counters, pooled
connections), and a sync whose `upsync` line stays keeps following (and keeps its synced list)."""

import asyncio
import logging
from typing import TYPE_CHECKING

from upsync.config.model import Config
from upsync.upstream.group import UpstreamGroup

if TYPE_CHECKING:
    from upsync.upstream.sync import UpstreamSync

log = logging.getLogger("upsync")


class Upstreams:
    def __init__(self, follow_registries: bool = True) -> None:
        # off in a worker: the master follows the registries and sends each list
        self.follow_registries = follow_registries
        self.groups: dict[str, UpstreamGroup] = {}
        self.background: set[asyncio.Task[None]] = set()

    def apply(self, config: Config) -> list["UpstreamSync"]:
        """Build the groups of a config, reusing what stays; returns the syncs that are new
        (to be loaded and started by the caller)."""
        groups: dict[str, UpstreamGroup] = {}
        new_syncs: list[UpstreamSync] = []
        for name, upstream in config.upstreams.items():
            group = self.groups.get(name)
            old_sync = group.sync if group is not None else None
            if group is not None and group.config.method == upstream.method:
                # a synced list stays while the same registry feeds it: followed here, or (in
                # a worker) by the master, whose sync goes on and sends no list again
                fed_alike = upstream.sync_spec is not None and (
                    old_sync is not None
                    or (not self.follow_registries and group.config.sync_spec == upstream.sync_spec)
                )
                group.reconfigure(upstream)
                if not fed_alike:
                    group.replace(upstream.servers)
                    group.source = "static"
            else:
                group = UpstreamGroup(upstream)
            spec = upstream.sync_spec if self.follow_registries else None
            if old_sync is not None and (spec != old_sync.spec or group.sync is not old_sync):
                self.retire(old_sync)
                group.sync = None
            if spec is not None and group.sync is None:
                # imported here: a worker follows no registry and never loads their clients
                from upsync.upstream import sync

                if old_sync is not None and old_sync.group is not group:
                    group.replace(old_sync.group.specs())  # same registry, new balancer
                new_syncs.append(sync.UpstreamSync(group, spec))
            groups[name] = group
        for name, old in self.groups.items():
            if name not in groups:
                old.pool.close_all()
                if old.sync is not None:
                    self.retire(old.sync)
        self.groups = groups
        return new_syncs

    def retire(self, sync: "UpstreamSync") -> None:
        task = asyncio.get_running_loop().create_task(sync.stop())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def syncs(self) -> list["UpstreamSync"]:
        return [group.sync for group in self.groups.values() if group.sync is not None]

    async def close(self) -> None:
        await asyncio.gather(*(sync.stop() for sync in self.syncs()), *self.background)

    def close_pools(self) -> None:
        for group in self.groups.values():
            group.pool.close_all()
