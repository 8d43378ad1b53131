"""The scheduler's in-memory state: hosts, tasks, each task's peers and piece digests.

Synchronous and free of I/O so the service (and the benchmark) can drive it
directly; the clock is injected so expiry is testable. Everything a restarted
scheduler needs is re-sent by peers (a host it does not know is asked for a full
announce of what it holds), so nothing here is persisted.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field

from damselfly.api import hashring
from damselfly.api.scheduler import (
    AnnounceHost,
    Parent,
    ParentFailed,
    PieceReports,
    RegisterTask,
    Reschedule,
    Schedule,
    TaskResult,
)
from damselfly.config.scheduler import Limits
from damselfly.scheduler import evaluator

# Piece costs kept per host for the bad-parent rule; a window, so memory is
# bounded and old behaviour ages out.
COST_WINDOW = 64


@dataclass(slots=True)
class Host:
    """A machine running a peer (or seed peer), as last announced."""

    host_id: str
    last_seen: float
    ip: str = ""
    upload_port: int = 0
    seed: bool = False
    announced: bool = False
    upload_slots_total: int = 0
    upload_slots_free: int = 0
    upload_slots_per_task: int | None = None  # children one task may have at once
    disk_free_bytes: int = 0
    costs: deque[float] = field(default_factory=lambda: deque(maxlen=COST_WINDOW))
    cost_samples: int = 0  # costs ever appended: the version of ``costs``
    bad_checked_at: int = -1
    bad: bool = False
    upload_successes: int = 0
    upload_failures: int = 0
    tasks: set[str] = field(default_factory=set)

    def is_bad_parent(self) -> bool:
        """The bad-parent rule over the cost window, recomputed only when costs changed."""
        if self.bad_checked_at != self.cost_samples:
            self.bad = evaluator.is_bad_parent(self.costs)
            self.bad_checked_at = self.cost_samples
        return self.bad


@dataclass(slots=True)
class PeerState:
    """One host's part in one task."""

    host_id: str
    finished: set[int] = field(default_factory=set)
    parents: frozenset[str] = frozenset()  # changed only through Task.set_parents
    blocklist: set[str] = field(default_factory=set)
    failed_parents: set[str] = field(default_factory=set)
    complete: bool = False
    failed: bool = False
    reschedules: int = 0


@dataclass(slots=True)
class Task:
    """One object being distributed, identified by the peers' task id."""

    task_id: str
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    sha256: str | None = None
    size: int | None = None
    piece_length: int | None = None
    piece_digests: dict[int, str] = field(default_factory=dict)
    peers: dict[str, PeerState] = field(default_factory=dict)
    failed_seeds: set[str] = field(default_factory=set)
    # parent host id -> peers of this task that have it as a parent, kept by
    # set_parents so that "has this parent room for another child?" is O(1).
    children: Counter[str] = field(default_factory=Counter)

    def set_parents(self, peer: PeerState, parents: Set[str]) -> None:
        for old in peer.parents - parents:
            self.children[old] -= 1
            if self.children[old] <= 0:
                del self.children[old]
        for new in parents - peer.parents:
            self.children[new] += 1
        peer.parents = frozenset(parents)

    def children_besides(self, parent_id: str, child: PeerState) -> int:
        """Peers with ``parent_id`` as a parent, ``child`` itself not counted."""
        return self.children[parent_id] - (parent_id in child.parents)

    def total_pieces(self) -> int | None:
        if self.size is None or not self.piece_length:
            return None
        return -(-self.size // self.piece_length)


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``schedule`` concluded; ``seeds_to_try`` means "trigger one of these"."""

    schedule: Schedule
    seeds_to_try: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AnnounceOutcome:
    """Digest conflicts in an announce, and whether the host must announce in full.

    A partial announce from a host this scheduler does not know (it restarted,
    or expired the host) says nothing of the tasks that did not change.
    """

    conflicts: int = 0
    resync: bool = False


@dataclass(frozen=True, slots=True)
class PieceOutcome:
    """Accounting from one batch of piece reports, for the metrics."""

    accepted: int = 0
    conflicts: int = 0
    back_to_source_bytes: int = 0
    remote_peer_bytes: int = 0


NO_PARENTS = evaluator.parents_index({})


class Resources:
    """Hosts, tasks and peers; the rules of scheduling applied to them."""

    def __init__(
        self,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.clock = clock
        self.rng = rng or random.Random()
        self.hosts: dict[str, Host] = {}
        self.tasks: dict[str, Task] = {}

    # -- hosts ---------------------------------------------------------------

    def _host(self, host_id: str) -> Host:
        host = self.hosts.get(host_id)
        if host is None:
            host = Host(host_id=host_id, last_seen=self.clock())
            self.hosts[host_id] = host
        return host

    def announce(self, req: AnnounceHost) -> AnnounceOutcome:
        """Record a host heartbeat and what it holds (all of it, or what changed)."""
        known = req.host_id in self.hosts and self.hosts[req.host_id].announced
        host = self._host(req.host_id)
        host.last_seen = self.clock()
        host.ip = req.ip
        host.upload_port = req.upload_port
        host.seed = req.seed
        host.announced = True
        host.upload_slots_total = req.upload_slots_total
        host.upload_slots_free = req.upload_slots_free
        host.upload_slots_per_task = req.upload_slots_per_task
        host.disk_free_bytes = req.disk_free_bytes
        conflicts = 0
        held: set[str] = set()
        for item in req.tasks:
            held.add(item.task_id)
            task = self._task(item.task_id)
            if not task.url:
                task.url = item.url
            task.size = task.size if item.size is None else item.size
            task.piece_length = (
                task.piece_length if item.piece_length is None else item.piece_length
            )
            peer = self._peer(task, host)
            for number, digest in item.piece_digests.items():
                if self._record_digest(task, number, digest):
                    peer.finished.add(number)
                else:
                    conflicts += 1
            if item.complete:
                self._mark_complete(task, peer)
        # A complete task the host no longer holds was evicted from its store.
        evicted = host.tasks - held if req.full else set(req.dropped) & host.tasks
        for task_id in evicted:
            gone = self.tasks.get(task_id)
            was = gone.peers.get(host.host_id) if gone else None
            if gone is not None and was is not None and was.complete:
                self._drop_peer(gone, host.host_id)
        return AnnounceOutcome(conflicts, resync=not req.full and not known)

    def expire(self) -> list[str]:
        """Drop hosts not heard from within the TTL; they stop being parents."""
        deadline = self.clock() - self.limits.host_ttl
        gone = [h.host_id for h in self.hosts.values() if h.last_seen < deadline]
        for host_id in gone:
            self.drop_host(host_id)
        return gone

    def drop_host(self, host_id: str) -> None:
        host = self.hosts.pop(host_id, None)
        if host is None:
            return
        for task_id in list(host.tasks):
            task = self.tasks.get(task_id)
            if task is not None:
                self._drop_peer(task, host_id, host)

    def alive_seeds(self) -> list[str]:
        return [h.host_id for h in self.hosts.values() if h.seed and h.announced]

    # -- tasks ---------------------------------------------------------------

    def _task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            task = Task(task_id=task_id)
            self.tasks[task_id] = task
        return task

    def _peer(self, task: Task, host: Host) -> PeerState:
        peer = task.peers.get(host.host_id)
        if peer is None:
            peer = PeerState(host_id=host.host_id)
            task.peers[host.host_id] = peer
            host.tasks.add(task.task_id)
        return peer

    def _drop_peer(self, task: Task, host_id: str, host: Host | None = None) -> None:
        peer = task.peers.pop(host_id, None)
        if peer is not None:
            task.set_parents(peer, frozenset())
        owner = host or self.hosts.get(host_id)
        if owner is not None:
            owner.tasks.discard(task.task_id)
        if not task.peers:
            del self.tasks[task.task_id]

    @staticmethod
    def _record_digest(task: Task, number: int, digest: str) -> bool:
        """First digest reported for a piece wins; False for a conflicting later one."""
        recorded = task.piece_digests.setdefault(number, digest)
        return recorded == digest

    @staticmethod
    def _mark_complete(task: Task, peer: PeerState) -> None:
        peer.complete = True
        peer.failed = False
        task.set_parents(peer, frozenset())  # depends on no one: cannot be part of a cycle
        total = task.total_pieces()
        if total is not None and len(peer.finished) < total:
            peer.finished.update(range(total))

    def register(self, req: RegisterTask) -> Decision:
        """A peer starts (or restarts) a task: remember it and choose parents."""
        task = self._task(req.task_id)
        if req.url:
            task.url = req.url
        if req.headers:
            task.headers = dict(req.headers)
        if req.sha256:
            task.sha256 = req.sha256
        if req.size is not None:
            task.size = req.size
        if req.piece_length is not None:
            task.piece_length = req.piece_length
        peer = self._peer(task, self._host(req.host_id))
        peer.failed = False
        peer.reschedules = 0
        return self._schedule(task, peer)

    def reschedule(self, req: Reschedule) -> Decision:
        """The peer's parents failed: remember the block list and choose again."""
        task = self._task(req.task_id)
        peer = self._peer(task, self._host(req.host_id))
        peer.blocklist.update(b for b in req.blocklist if b != req.host_id)
        if not req.refresh:
            peer.reschedules += 1
        if peer.reschedules > self.limits.reschedule_limit:
            task.set_parents(peer, frozenset())
            return Decision(self._reply(task, [], back_to_source=True))
        return self._schedule(task, peer)

    def _candidate(
        self, task: Task, host_id: str, child: PeerState | None = None
    ) -> evaluator.Candidate | None:
        """``host_id`` as a parent, or None if it cannot serve; with ``child``, None
        also when it already has as many other children in this task as it serves at once.
        """
        peer = task.peers.get(host_id)
        host = self.hosts.get(host_id)
        if peer is None or host is None or peer.failed or not host.announced:
            return None
        if child is not None and evaluator.is_full(
            task.children_besides(host_id, child), host.upload_slots_per_task
        ):
            return None
        return evaluator.Candidate(
            host_id=host_id,
            seed=host.seed,
            complete=peer.complete,
            finished_pieces=len(peer.finished),
            upload_slots_total=host.upload_slots_total,
            upload_slots_free=host.upload_slots_free,
            upload_successes=host.upload_successes,
            upload_failures=host.upload_failures,
            bad=host.is_bad_parent(),
        )

    def _parents_of(self, task: Task) -> Callable[[str], Set[str]]:
        empty: frozenset[str] = frozenset()

        def parents_of(host_id: str) -> Set[str]:
            peer = task.peers.get(host_id)
            return peer.parents if peer is not None else empty

        return parents_of

    def _schedule(self, task: Task, peer: PeerState) -> Decision:
        child = peer.host_id
        excluded = peer.blocklist | peer.failed_parents
        # A peer nobody downloads from (one just registering) has no descendants,
        # so no candidate can close a cycle through it: skip the graph walks.
        parents_of = self._parents_of(task) if task.children[child] else NO_PARENTS

        def candidate_of(host_id: str) -> evaluator.Candidate | None:
            return self._candidate(task, host_id, peer)

        def candidate_over_limit(host_id: str) -> evaluator.Candidate | None:
            return self._candidate(task, host_id)

        sample = evaluator.filter_candidates(
            child,
            evaluator.lazy_shuffle(list(task.peers), self.rng),
            candidate_of,
            excluded,
            parents_of,
            self.limits.filter_sample,
            self.limits.max_examined,
        )
        if not sample:
            # The random sample found nobody (e.g. most of the swarm descends
            # from this child). Complete peers and seeds have no parents, so
            # they cannot close a cycle: look at them all before giving up,
            # full or not (an extra child beats a trip to the origin).
            sources = [
                h
                for h, p in task.peers.items()
                if p.complete or ((host := self.hosts.get(h)) is not None and host.seed)
            ]
            sample = evaluator.filter_candidates(
                child,
                evaluator.lazy_shuffle(sources, self.rng),
                candidate_over_limit,
                excluded,
                parents_of,
                self.limits.filter_sample,
            )
        chosen = evaluator.rank(sample, task.total_pieces(), self.limits.candidate_parents)
        if chosen:
            task.set_parents(peer, {c.host_id for c in chosen})
            return Decision(self._reply(task, [self._parent(task, c.host_id) for c in chosen]))
        task.set_parents(peer, frozenset())
        child_host = self.hosts.get(child)
        if child_host is not None and child_host.seed:
            # A seed with no parents fetches the origin itself; it never triggers seeds.
            return Decision(self._reply(task, [], back_to_source=True))
        # No usable holder: ask a seed. Seeds already in the task were just
        # filtered out for a reason, so they are not asked again.
        seeds = evaluator.seed_order(
            task.task_id,
            self.alive_seeds(),
            excluded | task.failed_seeds | task.peers.keys() | {child},
            hashring.rank,
        )
        return Decision(self._reply(task, [], back_to_source=not seeds), tuple(seeds))

    def _parent(self, task: Task, host_id: str) -> Parent:
        host = self.hosts[host_id]
        peer = task.peers.get(host_id)
        return Parent(
            host_id=host_id,
            ip=host.ip,
            upload_port=host.upload_port,
            seed=host.seed,
            complete=peer.complete if peer else False,
            finished_pieces=len(peer.finished) if peer else 0,
        )

    @staticmethod
    def _reply(
        task: Task,
        parents: list[Parent],
        back_to_source: bool = False,
        seed_triggered: bool = False,
    ) -> Schedule:
        return Schedule(
            parents=parents,
            back_to_source=back_to_source,
            seed_triggered=seed_triggered,
            piece_digests=dict(task.piece_digests),
            size=task.size,
            piece_length=task.piece_length,
        )

    # -- seeds ---------------------------------------------------------------

    def begin_seed(self, task_id: str, seed_id: str, child_id: str) -> Schedule:
        """Record that ``seed_id`` is being asked to fetch the task; it is the child's parent.

        Done before the trigger request is sent, so children registering
        meanwhile get the seed as a parent instead of triggering again.
        """
        task = self._task(task_id)
        seed = self._host(seed_id)
        seed_peer = self._peer(task, seed)
        task.set_parents(seed_peer, frozenset())
        child = task.peers.get(child_id)
        if child is not None:
            task.set_parents(child, {seed_id})
        return self._reply(task, [self._parent(task, seed_id)], seed_triggered=True)

    def seed_failed(self, task_id: str, seed_id: str, child_id: str) -> None:
        """The seed could not be triggered: forget it for this task and try no more."""
        task = self.tasks.get(task_id)
        if task is None:
            return
        task.failed_seeds.add(seed_id)
        peer = task.peers.get(seed_id)
        if peer is not None and not peer.finished and not peer.complete:
            self._drop_peer(task, seed_id)
        child = task.peers.get(child_id)
        if child is not None:
            task.set_parents(child, child.parents - {seed_id})

    def back_to_source(self, task_id: str) -> Schedule:
        task = self.tasks.get(task_id)
        return self._reply(task, [], back_to_source=True) if task else Schedule(back_to_source=True)

    # -- reports -------------------------------------------------------------

    def report_pieces(self, req: PieceReports) -> PieceOutcome:
        """Record finished pieces: first digest wins, costs go to the serving parent."""
        task = self._task(req.task_id)
        peer = self._peer(task, self._host(req.host_id))
        accepted = conflicts = origin_bytes = peer_bytes = 0
        for piece in req.pieces:
            if not self._record_digest(task, piece.number, piece.digest):
                conflicts += 1
                continue
            accepted += 1
            peer.finished.add(piece.number)
            parent_id = piece.parent_host_id
            if parent_id is None:
                origin_bytes += piece.length
                continue
            peer_bytes += piece.length
            if parent_id not in peer.parents:
                task.set_parents(peer, peer.parents | {parent_id})
            parent = self.hosts.get(parent_id)
            if parent is not None:
                parent.costs.append(piece.cost_ms)
                parent.cost_samples += 1
                parent.upload_successes += 1
        return PieceOutcome(accepted, conflicts, origin_bytes, peer_bytes)

    def report_result(self, req: TaskResult) -> None:
        task = self._task(req.task_id)
        peer = self._peer(task, self._host(req.host_id))
        if req.size is not None:
            task.size = req.size
        if req.piece_length is not None:
            task.piece_length = req.piece_length
        if req.success:
            self._mark_complete(task, peer)
        elif req.changed:
            self.new_generation(task)
        else:
            peer.failed = True
            peer.complete = False
            task.set_parents(peer, frozenset())

    def new_generation(self, task: Task) -> None:
        """The object changed at its origin: forget the task whole (its digests, every
        holder), so no later download is told to match, or fetch, the old version's
        pieces. Holders of a complete old copy come back with their next full announce
        (a digest conflict then blocks them as parents for the new version's children)."""
        for host_id in list(task.peers):
            self._drop_peer(task, host_id)
        self.tasks.pop(task.task_id, None)

    def parent_failed(self, req: ParentFailed) -> None:
        """Lower the parent's record; the child does not get it again for this task."""
        task = self._task(req.task_id)
        peer = self._peer(task, self._host(req.host_id))
        task.set_parents(peer, peer.parents - {req.parent_host_id})
        if req.reason == "corrupt":
            peer.blocklist.add(req.parent_host_id)
        else:
            peer.failed_parents.add(req.parent_host_id)
        parent = self.hosts.get(req.parent_host_id)
        if parent is not None:
            parent.upload_failures += 1

    # -- introspection -------------------------------------------------------

    def holders(self, task_id: str) -> Sequence[str]:
        task = self.tasks.get(task_id)
        return sorted(task.peers) if task else []
