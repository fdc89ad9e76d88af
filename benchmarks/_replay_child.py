"""Child process for the peak-RSS measurement of :mod:`benchmarks.replay_vs_snapshot`.

``python -m benchmarks._replay_child MODE BACKEND LOCATION [BATCH]`` opens a log
that the parent already loaded and prints one JSON line:
``{"events": int, "digest": str, "seconds": float, "maxrss_bytes": int}``.

- ``MODE``: ``replay`` (the real runner from scratch, read-only: read everything
  with ``read_after``, decode, fold, under the runner's GC settings) or
  ``baseline`` (import and open the log, read nothing), so the parent can
  report the replay's peak RSS and its excess over an idle process;
- ``BACKEND``/``LOCATION``: ``file PATH`` or ``redis URL#STREAM``.

``maxrss_bytes`` is the process's peak resident set size: ``VmHWM`` from
``/proc/self/status`` where it exists (Linux), which starts afresh at
``exec``; ``ru_maxrss`` is not used there because Linux carries the parent's
high-water mark across fork + exec. Elsewhere ``resource.getrusage(RUSAGE_SELF).ru_maxrss``.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from shop_adapters.protocols import EventLog
from shop_core import EMPTY, state_digest


def _open(backend: str, location: str) -> EventLog:
    if backend == "file":
        from shop_adapters.logs.file import FileLog

        return FileLog(location)
    if backend == "redis":
        import redis

        from shop_adapters.logs.redis_stream import RedisStreamLog

        url, _, stream = location.partition("#")
        return RedisStreamLog(redis.Redis.from_url(url), stream=stream)
    raise SystemExit(f"backend must be file or redis, got {backend!r}")


def _peak_rss() -> int:
    """Peak RSS in bytes (``VmHWM`` on Linux, else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def main(argv: list[str]) -> int:
    mode, backend, location = argv[:3]
    batch = int(argv[3]) if len(argv) > 3 else 10_000
    log = _open(backend, location)
    state = EMPTY
    n = 0
    t0 = time.perf_counter()
    if mode == "replay":
        from .replay_vs_snapshot import runner_replay  # the real runner

        _seconds, result = runner_replay(log, batch=batch)
        state, n = result.state, result.records
    seconds = time.perf_counter() - t0
    log.close()
    maxrss = _peak_rss()
    print(
        json.dumps(
            {
                "events": n,
                "digest": state_digest(state),
                "seconds": seconds,
                "maxrss_bytes": maxrss,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
