"""Wall-clock and process CPU time of pulling batches from an iterator."""

import resource
import time


def cpu_seconds():
    """User plus system CPU time of this process, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(batches, batch_size, count):
    """Pulls `count` batches from the iterator `batches`; returns scenes/s and CPU us per scene."""
    cpu, start = cpu_seconds(), time.perf_counter()
    for _ in range(count):
        next(batches)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    scenes = count * batch_size
    return {"scenes_per_s": round(scenes / wall, 1), "cpu_us_per_scene": round(1e6 * cpu / scenes, 1)}
