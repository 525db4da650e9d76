"""The one timing loop the benchmarks share."""

import time


def time_calls(fn, repeats: int = 5) -> list:
  """Seconds of `repeats` calls of fn (which must block until its result is ready), after one
  untimed call that compiles and warms up."""
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times
