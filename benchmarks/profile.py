"""Where a traced TensorFlow step spends its time, by op type, from a profiler trace.

`trace(fn, logdir)` runs `fn` under the TensorFlow profiler (the trace opens
in TensorBoard's Profile tab); `op_times(logdir)` reads the trace back and
sums the time of every executed op by type, over the executor threads.
"""

import collections
import glob
import os

# (category, op-type substrings), the first match wins.
CATEGORIES = (
    ("convolution, filter gradient", ("BackpropFilter",)),
    ("convolution, input gradient", ("BackpropInput",)),
    ("convolution, forward", ("Conv2D",)),
    ("matmul (Winograd products and transforms)", ("MatMul", "Einsum")),
    ("optimizer", ("ApplyAdam", "AssignAdd", "AssignSub")),
)
OTHER = "elementwise and other"


def trace(fn, logdir):
    """Runs `fn()` under the profiler, writing the trace below `logdir`."""
    import tensorflow as tf

    tf.profiler.experimental.start(logdir)
    try:
        fn()
    finally:
        tf.profiler.experimental.stop()


def op_times(logdir):
    """Milliseconds of op execution by op type (oneDNN prefixes removed), and op counts."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    if not paths:
        raise FileNotFoundError(f"No profiler trace (*.xplane.pb) below {logdir}.")
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    times, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:  # executor bookkeeping, not an op
                    continue
                op_type = name.rsplit(":", 1)[1].removeprefix("_MklNative").removeprefix("_Mkl")
                times[op_type] += event.duration_ps / 1e9
                counts[op_type] += 1
    return times, counts


def category(op_type):
    """The CATEGORIES name of an op type, or OTHER."""
    for name, markers in CATEGORIES:
        if any(marker in op_type for marker in markers):
            return name
    return OTHER


def by_category(times):
    """Milliseconds by category, in CATEGORIES order."""
    totals = collections.Counter()
    for op_type, ms in times.items():
        totals[category(op_type)] += ms
    names = [name for name, _ in CATEGORIES] + [OTHER]
    return {name: totals[name] for name in names}


def report(times, counts, top=12):
    """A printable table: share of op time by category, then the `top` op types."""
    total = sum(times.values()) or 1.0
    lines = [f"{'op time by category':38s} {'ms':>9s} {'share':>6s}"]
    for name, ms in by_category(times).items():
        lines.append(f"{name:38s} {ms:9.1f} {ms / total:6.1%}")
    lines.append(f"{'op type':38s} {'ms':>9s} {'share':>6s} {'calls':>6s}")
    for op_type, ms in times.most_common(top):
        lines.append(f"{op_type:38s} {ms:9.1f} {ms / total:6.1%} {counts[op_type]:6d}")
    return "\n".join(lines)
