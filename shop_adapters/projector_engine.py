"""The projector: follows the outcome journal and keeps views in Redis, exactly once. Generic.

``Projector(client, stream, projections, config).run()`` reads
``<stream>:outcomes`` (the runner's outcome journal, :mod:`shop_adapters.journals`)
in batches (``XRANGE <journal> (<position> + COUNT n``, and when caught up
``XREAD BLOCK ms COUNT n STREAMS <journal> <position>``, from the lowest
tracking position of its views; never ``$``) and applies each batch to every view it runs
(:mod:`shop_adapters.projections`), stored as :mod:`shop_adapters.view_store`
says. Per batch and view:

1. ``HMGET`` the documents the batch touches (one pipeline for all views);
2. fold the batch over them in memory
   (:func:`~shop_adapters.projections.evolve_batch`, the same code as the pure
   :func:`~shop_adapters.projections.fold`);
3. write the changed documents and the view's new tracking position in one
   ``EVALSHA`` (:data:`~shop_adapters.view_store.APPLY`), which applies only if
   the view is still at the generation and position that were read.

So a crash at any moment (SIGKILL included) neither loses nor repeats an
outcome: the next start reads the tracking position and goes on from there. A
write refused because the view moved (another projector of the same view, a
switched rebuild, a reply lost on the wire whose write had landed) is not an
error: the projector re-reads the checkpoint and goes on from it.

Each view has its own tracking position: one projector may run several
projections and several projectors may share them out (``--projection``). A
view is (re)built beside the live one (``<stream>:view:<name>:rebuild``) when
it does not exist yet, when its stored version is older than the
projection's, or when asked (``rebuild``); once the build has caught up
(a read returned less than a batch) and is at least as far on as the live
view, :meth:`~shop_adapters.view_store.RedisViewStore.switch` swaps it in
atomically. During a rebuild asked for a view of the current version, the
live view goes on being updated too, so readers never see it stall.

The projector never skips an outcome: one that cannot be decoded
(:class:`~shop_adapters.errors.IntegrityError`) or that a projection cannot
apply (:class:`~shop_adapters.projections.ProjectionError`) stops it, naming
the position. A live view whose tracking position names an outcome the
journal no longer holds, or holds with other fields (the journal was set
aside by an accepted rollback, or replaced), stops it with an
``IntegrityError`` that says to rebuild the view; so do outcomes deleted
from the journal after a view's position (``XTRIM``/``XDEL``, as ``XINFO
STREAM`` reports them on Redis >= 7). Redis outages are retried under the one
:class:`~shop_adapters.retry.RetryPolicy`.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from .catchup import record_anchor
from .domain import Outcome
from .errors import IntegrityError, OperationalError
from .journals import outcome_from_fields
from .keys import StreamKeys
from .logs.redis_stream import RedisStreamLog
from .projections import Projection, check_projection, evolve_batch, keys_of_batch
from .protocols import ORIGIN, Position, Record
from .redis_errors import redis_errors
from .retry import RetryPolicy, Stopped
from .view_store import RedisViewStore, ViewCheckpoint

__all__ = ["Projector", "ProjectorConfig", "ProjectorSummary", "ViewSummary", "decode_outcomes"]

_log = logging.getLogger("shop.projector")


@dataclass(frozen=True, slots=True)
class ProjectorConfig:
    """How a :class:`Projector` runs.

    - ``batch_size``: most outcomes per read (and per view write);
    - ``block_ms``: how long one ``XREAD BLOCK`` waits while following, in
      milliseconds (also how fast a stop is noticed, and how often an idle
      projector checks that the journal still holds its views' history);
    - ``rebuild``: names of the views to rebuild from the first outcome,
      beside the live ones, now;
    - ``retry``: the :class:`~shop_adapters.retry.RetryPolicy` for Redis outages;
    - ``progress_interval``: seconds between progress log lines (``None``: none).
    """

    batch_size: int = 1_000
    block_ms: int = 1_000
    rebuild: frozenset[str] = frozenset()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    progress_interval: float | None = 10.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.block_ms < 1:
            raise ValueError(f"block_ms must be >= 1, got {self.block_ms}")


@dataclass(frozen=True, slots=True)
class ViewSummary:
    """One view after a run: ``name``, ``version``, tracking ``position``,
    ``outcomes`` applied by this run, ``total_outcomes`` applied by the view,
    ``rebuilt`` (a build of this run was switched in), ``generation``, and
    ``building`` (a build is still under way: ``position`` is the build's)."""

    name: str
    version: int
    position: Position
    outcomes: int
    total_outcomes: int
    rebuilt: bool
    generation: str
    building: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the position as ``"ms-seq"``)."""
        return {
            "name": self.name,
            "version": self.version,
            "position": str(self.position),
            "outcomes": self.outcomes,
            "total_outcomes": self.total_outcomes,
            "rebuilt": self.rebuilt,
            "generation": self.generation,
            "building": self.building,
        }


@dataclass(frozen=True, slots=True)
class ProjectorSummary:
    """What a run did: ``views`` (:class:`ViewSummary`, in the projections' order),
    ``stop_reason`` (``"idle"`` or ``"stopped"``), ``elapsed_s`` (seconds)."""

    views: tuple[ViewSummary, ...]
    stop_reason: str
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """``{"views": [...], "stop_reason", "elapsed_s"}``."""
        return {
            "views": [v.to_dict() for v in self.views],
            "stop_reason": self.stop_reason,
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def text(self) -> str:
        """One line per view, then the stop reason and the time."""
        lines = [
            f"{v.name}: {'building at' if v.building else 'at'} {v.position} "
            f"(version {v.version}; {v.outcomes} outcomes this run, {v.total_outcomes} "
            f"in all{'; rebuilt and switched in' if v.rebuilt else ''})"
            for v in self.views
        ]
        lines += [
            f"stop_reason: {json.dumps(self.stop_reason)}",
            f"elapsed_s: {self.elapsed_s:.3f}",
        ]
        return "\n".join(lines)


@dataclass(slots=True)
class _Target:
    """One view this process writes: the live one, or a build beside it."""

    projection: Projection
    key: str
    rebuilding: bool
    checkpoint: ViewCheckpoint
    applied: int = 0
    rebuilt: bool = False

    @property
    def name(self) -> str:
        return self.projection.name


def decode_outcomes(records: Sequence[Record], key: str) -> list[tuple[Position, Outcome]]:
    """Journal entries as ``(position, Outcome)``; ``IntegrityError`` naming the
    first entry that is not an outcome (the journal is the runner's alone)."""
    out: list[tuple[Position, Outcome]] = []
    for record in records:
        try:
            out.append((record.position, outcome_from_fields(record.fields)))
        except (ValueError, KeyError, TypeError) as e:
            raise IntegrityError(
                f"the entry {record.position} of {key} is not an outcome ({e}); only the "
                f"runner writes there. Look at it with XRANGE {key} {record.position} "
                f"{record.position}"
            ) from e
    return out


class Projector:
    """Keeps the views of ``projections`` over ``<stream>:outcomes`` in Redis
    (see the module docstring).

    - ``client``: a ``redis.Redis`` whose ``socket_timeout`` is ``None`` or
      longer than ``config.block_ms`` plus 250 ms (``ValueError`` otherwise);
    - ``stream``: the log's stream (the journal is ``<stream>:outcomes``, the
      views ``<stream>:view:<name>``);
    - ``projections``: distinct names (``ValueError`` otherwise);
    - ``logger``: default ``shop.projector``.

    :meth:`run` raises :class:`~shop_adapters.errors.IntegrityError` (an entry
    that is not an outcome, a view whose history the journal no longer holds),
    :class:`~shop_adapters.projections.ProjectionError`, a
    :class:`~shop_adapters.errors.PermanentError` at once, and an
    ``OperationalError`` only when the retry policy gives up.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        projections: Sequence[Projection],
        config: ProjectorConfig | None = None,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config or ProjectorConfig()
        names = [p.name for p in projections]
        for p in projections:
            check_projection(p)
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"need one or more projections with distinct names, got {names}")
        unknown = self.config.rebuild - set(names)
        if unknown:
            raise ValueError(f"cannot rebuild {sorted(unknown)}: not among {names}")
        self.client = client
        self.stream = stream
        self.projections = list(projections)
        self.journal_key = StreamKeys.for_stream(stream).outcomes
        self.journal = RedisStreamLog(
            client, self.journal_key, max_block_ms=self.config.block_ms, max_batch_bytes=None
        )
        self.store = RedisViewStore(client, stream)
        self._logger = logger or _log
        self._stop = threading.Event()
        self._targets: list[_Target] = []
        self._caught_up = False
        self._idle_check = 0.0
        self._report_clock = time.monotonic()
        self._report_applied = 0

    def stop(self) -> None:
        """Ask :meth:`run` to return after the step in progress (thread- and signal-safe)."""
        self._stop.set()

    # -- opening views ---------------------------------------------------------------------

    def _open(self) -> None:
        targets: list[_Target] = []
        for p in self.projections:
            keys = self.store.keys(p.name)
            live, _ = self.store.checkpoints([keys.live, keys.rebuild])
            fresh = p.name in self.config.rebuild
            if live is not None and live.version > p.version:
                self._logger.error(
                    "view %s is at version %d, newer than this projector's %d: leaving it alone",
                    p.name,
                    live.version,
                    p.version,
                )
                continue
            if live is not None and live.version == p.version:
                if self._holds_history(live):
                    targets.append(_Target(p, keys.live, False, live))
                elif not fresh:
                    raise self._lost_history(p.name, keys.live, live)
            if fresh or live is None or live.version < p.version:
                why = (
                    "a rebuild was asked for"
                    if fresh
                    else "it does not exist yet"
                    if live is None
                    else f"its version {live.version} is older than {p.version}"
                )
                build = self.store.begin(keys.rebuild, p.version, fresh=fresh)
                if not self._holds_history(build):
                    build = self.store.begin(keys.rebuild, p.version, fresh=True)
                if build.position != ORIGIN:
                    self._logger.info(
                        "resuming the build of view %s (version %d) at %s",
                        p.name,
                        p.version,
                        build.position,
                    )
                else:
                    self._logger.info(
                        "building view %s (version %d) beside the live one, because %s; "
                        "readers see %s until the switch",
                        p.name,
                        p.version,
                        why,
                        "no view" if live is None else "the old view",
                    )
                targets.append(_Target(p, keys.rebuild, True, build))
        if not targets:
            raise IntegrityError("no view left to project: every stored view is of a newer version")
        self._targets = targets
        self._check_deletions()

    def _check_deletions(self) -> None:
        """Outcomes deleted from the journal (``XTRIM``, ``XDEL``; ``XINFO STREAM``'s
        ``max-deleted-entry-id``, Redis >= 7) after a view's position would be folded
        over silently: an ``IntegrityError`` instead. Trimming before every view's
        position is harmless to the live views (a new build would then miss them)."""
        deleted = self.journal.history().max_deleted
        if deleted is None:
            return
        for target in self._targets:
            if deleted > target.checkpoint.position:
                what = "a build of" if target.rebuilding else "the view"
                raise IntegrityError(
                    f"outcomes up to {deleted} were deleted from {self.journal_key} (XTRIM or "
                    f"XDEL), after the position {target.checkpoint.position} of {what} "
                    f"{target.name}: it cannot be kept exact from what is left. Restore the "
                    "journal, or republish it (docs/read-models.md)"
                )

    def _holds_history(self, checkpoint: ViewCheckpoint) -> bool:
        """Whether the journal holds the outcome the view was last folded to, unchanged."""
        if checkpoint.position == ORIGIN:
            return True
        record = self.journal.read_at(checkpoint.position)
        return record is not None and record_anchor(record.fields) == checkpoint.anchor

    def _lost_history(self, name: str, key: str, checkpoint: ViewCheckpoint) -> IntegrityError:
        return IntegrityError(
            f"view {name} ({key}) was folded up to the outcome {checkpoint.position}, which "
            f"{self.journal_key} no longer holds as it was (the journal was set aside by an "
            "accepted rollback, or replaced): rebuild the view from the journal as it is now "
            f"with --rebuild --projection {name} (or --rebuild: every view)"
        )

    def _reload(self, target: _Target) -> None:
        """After a refused write (or an outage): follow what is stored now."""
        p = target.projection
        stored = self.store.checkpoint(target.key)
        if stored is not None and stored.version == p.version:
            if not self._holds_history(stored):
                if target.rebuilding:
                    target.checkpoint = self.store.begin(target.key, p.version, fresh=True)
                    return
                raise self._lost_history(p.name, target.key, stored)
            if stored.generation != target.checkpoint.generation:
                self._logger.info(
                    "view %s (%s) was rebuilt elsewhere; following that build from %s",
                    p.name,
                    target.key,
                    stored.position,
                )
            target.checkpoint = stored
            return
        if stored is not None and stored.version > p.version:
            self._logger.error(
                "view %s is now at version %d, newer than this projector's %d: leaving it alone",
                p.name,
                stored.version,
                p.version,
            )
            self._targets.remove(target)
            if not self._targets:
                raise IntegrityError(
                    "no view left to project: every stored view is of a newer version"
                )
            return
        # Gone, or of an older version: build it again beside whatever is live.
        keys = self.store.keys(p.name)
        if not target.rebuilding:
            self._logger.warning(
                "view %s (%s) disappeared or went back to an older version: rebuilding it",
                p.name,
                target.key,
            )
            if any(t.name == p.name and t.rebuilding for t in self._targets):
                self._targets.remove(target)
                return
        target.key, target.rebuilding = keys.rebuild, True
        target.checkpoint = self.store.begin(keys.rebuild, p.version, fresh=False)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, exit_when_idle: bool = False) -> ProjectorSummary:
        """Open the views (resuming or starting builds), then apply the journal
        batch by batch; with ``exit_when_idle``, return once the journal is
        drained and every build switched in, else follow it until :meth:`stop`.
        Returns a :class:`ProjectorSummary`."""
        started = time.monotonic()
        retry = self.config.retry
        try:
            for attempt in retry.attempts(
                "opening the views", stop=self._stop, logger=self._logger
            ):
                with attempt:
                    self._open()
        except Stopped:
            return self._summary("stopped", started)
        reason = "stopped"
        while not self._stop.is_set():
            try:
                for attempt in retry.attempts(
                    "projecting", stop=self._stop, logger=self._logger, where=self._where
                ):
                    with attempt:
                        if attempt.retry_state.attempt_number > 1:
                            for target in list(self._targets):
                                self._reload(target)
                            self._logger.info("reconnected; resuming after %s", self._where())
                        applied = self._step(exit_when_idle)
            except Stopped:
                break
            if applied == 0 and exit_when_idle and not any(t.rebuilding for t in self._targets):
                reason = "idle"
                break
            self._maybe_report()
        summary = self._summary(reason, started)
        self._logger.info("run ended", extra={"fields": summary.to_dict()})
        return summary

    def _where(self) -> str:
        """``sales 5-0, customers:rebuild 3-0``: where each view stands."""
        return ", ".join(
            f"{t.name}{':rebuild' if t.rebuilding else ''} {t.checkpoint.position}"
            for t in self._targets
        )

    def _step(self, exit_when_idle: bool) -> int:
        """One read and what follows it; returns the outcomes read (0 when idle)."""
        cfg = self.config
        after = min(t.checkpoint.position for t in self._targets)
        records = self.journal.read_after(after, cfg.batch_size)
        if not records:
            self._switch_builds()
            if exit_when_idle or self._stop.is_set():
                return 0
            records = self.journal.wait_after(after, cfg.batch_size, cfg.block_ms)
            if not records:
                self._check_while_idle()
                return 0
        self._apply(records)
        if len(records) < cfg.batch_size:
            self._switch_builds()
        return len(records)

    def _apply(self, records: list[Record]) -> None:
        outcomes = decode_outcomes(records, self.journal_key)
        positions = [p for p, _ in outcomes]
        last, anchor = records[-1].position, record_anchor(records[-1].fields)
        plans: list[tuple[_Target, list[tuple[Position, Outcome]], list[str]]] = []
        for target in self._targets:
            mine = outcomes[bisect.bisect_right(positions, target.checkpoint.position) :]
            if mine:
                plans.append((target, mine, keys_of_batch(target.projection, mine)))
        if not plans:
            return
        found = self.store.documents([(t.key, keys) for t, _, keys in plans])
        writes = []
        for (target, mine, _), docs in zip(plans, found, strict=True):
            changed = evolve_batch(target.projection, docs, mine)
            new = target.checkpoint.advanced(last, anchor, len(mine))
            writes.append((target.key, target.checkpoint, new, {k: docs[k] for k in changed}))
        results = self.store.write(writes)
        for (target, mine, _), (_, _, new, _), ok in zip(plans, writes, results, strict=True):
            if ok:
                target.checkpoint = new
                target.applied += len(mine)
            else:
                self._reload(target)

    def _switch_builds(self) -> None:
        """Switch in every build that has caught up (see the module docstring)."""
        for target in [t for t in self._targets if t.rebuilding]:
            result = self.store.switch(target.name, target.checkpoint)
            if result.outcome == "switched":
                self._logger.info(
                    "view %s rebuilt (version %d, %d outcomes, at %s) and switched in; %s",
                    target.name,
                    target.checkpoint.version,
                    target.checkpoint.outcomes,
                    target.checkpoint.position,
                    f"the old view (at {result.detail}) is removed"
                    if result.detail
                    else "there was no view before",
                )
                self._targets = [t for t in self._targets if t is target or t.name != target.name]
                target.key = self.store.keys(target.name).live
                target.rebuilding = False
                target.rebuilt = True
            elif result.outcome == "behind":
                live = Position.parse(result.detail)
                end = self.journal.last_position()
                if live > end:
                    raise IntegrityError(
                        f"the live view {target.name} is at {live}, past the end of "
                        f"{self.journal_key} ({end}): it was folded from another journal. "
                        f"Delete it (DEL {self.store.keys(target.name).live}) to let the "
                        "rebuild replace it"
                    )
            elif result.outcome == "newer":
                self._logger.error(
                    "view %s went live at version %s, newer than this projector's %d, while "
                    "it was being rebuilt: leaving it alone",
                    target.name,
                    result.detail,
                    target.checkpoint.version,
                )
                self._targets = [t for t in self._targets if t.name != target.name]
                if not self._targets:
                    raise IntegrityError(
                        "no view left to project: every stored view is of a newer version"
                    )
            else:  # "moved": another projector advanced or restarted this build
                self._reload(target)

    def _check_while_idle(self) -> None:
        """About once per ``block_ms`` while idle: the journal must still hold the
        history of every live view (a replaced journal is never followed silently)."""
        now = time.monotonic()
        if now - self._idle_check < self.config.block_ms / 1000:
            return
        self._idle_check = now
        for target in list(self._targets):
            if not self._holds_history(target.checkpoint):
                self._reload(target)
        self._check_deletions()

    # -- reporting -------------------------------------------------------------------------

    def lag(self) -> dict[str, int | None]:
        """Outcomes in the journal not yet applied, per view written by this process
        (``XLEN`` minus the view's count; ``None`` if Redis cannot say)."""
        try:
            with redis_errors("XLEN", self.journal_key):
                length = int(self.client.xlen(self.journal_key))
        except OperationalError:
            return {t.name: None for t in self._targets}
        return {t.name: max(0, length - t.checkpoint.outcomes) for t in self._targets}

    def _maybe_report(self) -> None:
        interval = self.config.progress_interval
        if interval is None:
            return
        now = time.monotonic()
        elapsed = now - self._report_clock
        if elapsed < interval:
            return
        applied = sum(t.applied for t in self._targets)
        self._logger.info(
            "progress",
            extra={
                "fields": {
                    "views": {
                        t.name + (":rebuild" if t.rebuilding else ""): str(t.checkpoint.position)
                        for t in self._targets
                    },
                    "outcomes_per_s": round((applied - self._report_applied) / elapsed, 1),
                    "lag": self.lag(),
                }
            },
        )
        self._report_clock = now
        self._report_applied = applied

    def _summary(self, reason: str, started: float) -> ProjectorSummary:
        views: list[ViewSummary] = []
        for p in self.projections:
            mine = [t for t in self._targets if t.name == p.name]
            if not mine:
                continue
            t = next((t for t in mine if not t.rebuilding), mine[0])
            cp = t.checkpoint
            views.append(
                ViewSummary(
                    p.name,
                    cp.version,
                    cp.position,
                    sum(x.applied for x in mine),
                    cp.outcomes,
                    t.rebuilt,
                    cp.generation,
                    t.rebuilding,
                )
            )
        return ProjectorSummary(tuple(views), reason, time.monotonic() - started)
