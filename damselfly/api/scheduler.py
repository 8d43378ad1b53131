"""The scheduler's wire contract: the JSON bodies peers and the scheduler exchange.

Peers (damselfly/peer) and the scheduler both import these models, so the
contract lives in one place. JSON is camelCase; Python code uses snake_case
(``populate_by_name``), so either spelling is accepted on input.

Endpoints (API port, default 8002):

- ``POST /v1/hosts/announce``      AnnounceHost -> AnnounceReply
- ``POST /v1/tasks/register``      RegisterTask -> Schedule
- ``POST /v1/tasks/reschedule``    Reschedule -> Schedule
- ``POST /v1/tasks/pieces``        PieceReports -> Ack
- ``POST /v1/tasks/result``        TaskResult -> Ack
- ``POST /v1/tasks/parent-failed`` ParentFailed -> Ack
- ``GET /healthz``, ``GET /readyz``

The scheduler calls a seed peer's upload server:

- ``POST http://{ip}:{uploadPort}/v1/seed`` SeedRequest -> 202 (the seed
  downloads in the background and announces/reports pieces as it goes).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

ANNOUNCE_PATH = "/v1/hosts/announce"
REGISTER_PATH = "/v1/tasks/register"
RESCHEDULE_PATH = "/v1/tasks/reschedule"
PIECES_PATH = "/v1/tasks/pieces"
RESULT_PATH = "/v1/tasks/result"
PARENT_FAILED_PATH = "/v1/tasks/parent-failed"
SEED_PATH = "/v1/seed"

# Digest of a piece: "blake3:<hex>" (a bare sha256 hex from earlier peers); opaque here.
Digest = str


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields ignored (forward compat)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
    )

    def to_json(self) -> bytes:
        """The wire form: camelCase keys."""
        return self.model_dump_json(by_alias=True).encode()


class HeldTask(Model):
    """A task a host holds (fully or partly), re-announced so a restarted scheduler relearns it."""

    task_id: str
    url: str
    size: int | None = None
    piece_length: int | None = None
    piece_digests: dict[int, Digest] = Field(default_factory=dict)
    complete: bool = False


class AnnounceHost(Model):
    """Periodic host heartbeat (every ~5 s and at start)."""

    host_id: str
    ip: str
    upload_port: int = Field(ge=1, le=65535)
    seed: bool = False
    upload_slots_total: int = Field(default=0, ge=0)
    upload_slots_free: int = Field(default=0, ge=0)
    # Children one task may have at once (a seed keeps this small so that children
    # trade among themselves); None: no per-task limit.
    upload_slots_per_task: int | None = Field(default=None, ge=1)
    disk_free_bytes: int = Field(default=0, ge=0)
    tasks: list[HeldTask] = Field(default_factory=list)
    # True: ``tasks`` is everything the host holds. False: only the tasks that
    # changed since its previous announce, and ``dropped`` those it no longer
    # holds; a host with a full store then sends a few bytes, not every digest.
    full: bool = True
    dropped: list[str] = Field(default_factory=list)


class AnnounceReply(Model):
    """How often the host should announce; hosts silent for 3 intervals are dropped."""

    interval_seconds: float
    # The scheduler cannot apply a partial announce (it restarted, or dropped the
    # host): the next announce must be full.
    resync: bool = False


class RegisterTask(Model):
    """A peer starts a task and asks for parents."""

    task_id: str
    host_id: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    size: int | None = None
    piece_length: int | None = None
    sha256: str | None = None


class Reschedule(Model):
    """A peer's parents failed; ask again, excluding ``blocklist`` for this task.

    ``refresh``: the parents are fine but hold nothing the peer still needs; it
    asks for more. Refreshes do not count towards the reschedule limit.
    """

    task_id: str
    host_id: str
    blocklist: list[str] = Field(default_factory=list)
    refresh: bool = False


class Parent(Model):
    """A candidate parent; the child fetches pieces from its upload server."""

    host_id: str
    ip: str
    upload_port: int
    seed: bool = False
    complete: bool = False
    finished_pieces: int = 0


class Schedule(Model):
    """The scheduler's answer to register/reschedule.

    ``back_to_source``: no parent can serve; fetch from the origin.
    ``seed_triggered``: a seed was just asked to fetch the task; it is among ``parents``.
    ``piece_digests``: first-reported digest per piece number; children verify against it.
    """

    parents: list[Parent] = Field(default_factory=list)
    back_to_source: bool = False
    seed_triggered: bool = False
    piece_digests: dict[int, Digest] = Field(default_factory=dict)
    size: int | None = None
    piece_length: int | None = None


class PieceReport(Model):
    """One finished piece; ``parent_host_id`` None means it came from the origin."""

    number: int = Field(ge=0)
    digest: Digest
    length: int = Field(ge=0)
    cost_ms: float = Field(default=0.0, ge=0)
    parent_host_id: str | None = None


class PieceReports(Model):
    """Batched piece reports of one host for one task."""

    task_id: str
    host_id: str
    pieces: list[PieceReport] = Field(default_factory=list)


class TaskResult(Model):
    """A peer finished (or gave up on) a task."""

    task_id: str
    host_id: str
    success: bool
    size: int | None = None
    piece_length: int | None = None
    error: str | None = None
    # Failed because the object changed at its origin: what the swarm recorded of
    # the task (digests, partial holders) is of an older version.
    changed: bool = False


ParentFailureReason = Literal["unreachable", "corrupt", "slow"]


class ParentFailed(Model):
    """A child could not use a parent; "corrupt" block-lists it for that child and task."""

    task_id: str
    host_id: str
    parent_host_id: str
    reason: ParentFailureReason


class Ack(Model):
    """Reply to reports: nothing to say beyond "accepted"."""

    ok: bool = True


class SeedRequest(Model):
    """Scheduler -> seed peer: fetch this task from the origin (answer 202, work in background)."""

    task_id: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    sha256: str | None = None
