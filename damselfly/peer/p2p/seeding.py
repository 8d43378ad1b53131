"""Seeding: the scheduler asks a seed peer to fetch a task from its origin.

The upload server takes the request (``POST /v1/seed``) and hands it here; this
decides whether to fetch and starts the download, so the swarm has a first copy
before the peers that will ask for it arrive.
"""

from __future__ import annotations

import logging

from multidict import CIMultiDict

from damselfly.api import scheduler as api
from damselfly.peer.net.access import check_upstream
from damselfly.peer.rules.taskid import TaskKey
from damselfly.peer.transfer.cache import Cache

log = logging.getLogger(__name__)


class Seeder:
    """Starts the origin downloads a scheduler asks this seed peer for."""

    def __init__(self, cache: Cache, allow_link_local: bool) -> None:
        self.cache = cache
        self.allow_link_local = allow_link_local

    def seed(self, request: api.SeedRequest) -> None:
        """Fetch the task unless it is already held; raises Refused (a 403) for a
        link-local origin, which the scheduler must not be able to make us dial."""
        if self.cache.complete_record(request.task_id) is not None:
            return
        check_upstream(request.url, self.allow_link_local)
        key = TaskKey(task_id=request.task_id, cache_url=request.url, sha256=request.sha256)
        log.info("seeding", extra={"task": request.task_id, "url": request.url})
        self.cache.download(key, request.url, CIMultiDict(request.headers), back_to_source=True)
