"""Choosing the tf.distribute strategy a run trains under, and how its input is sharded."""

import sys

import tensorflow as tf

from tiered_gqn.training import cluster

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
COMMUNICATIONS = ("auto", "ring", "nccl")
SHARD_POLICIES = {
    "auto": tf.data.experimental.AutoShardPolicy.AUTO,
    "file": tf.data.experimental.AutoShardPolicy.FILE,
    "data": tf.data.experimental.AutoShardPolicy.DATA,
    "off": tf.data.experimental.AutoShardPolicy.OFF,
}


def split_cpu(count):
    """Splits the CPU into `count` logical devices (for tests and demos of several replicas).

    Must run before TensorFlow runs any op or lists logical devices.

    Raises:
        ValueError: `count` is below 1.
        RuntimeError: TensorFlow is already initialised (one line).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"cpu_devices must be an integer of at least 1, got {count!r}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if len(current or [None]) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError:
        raise RuntimeError(
            f"cpu_devices={count}: TensorFlow is already initialised, so the CPU can no longer be "
            "split; choose the strategy before anything else runs a TensorFlow op.") from None


def _communication(name, gpus):
    implementation = tf.distribute.experimental.CommunicationImplementation
    if name == "ring" or (name == "auto" and not gpus):
        return implementation.RING
    return implementation.NCCL


def choose(name="auto", cpu_devices=None, environ=None, gpus=None):
    """The strategy `make_strategy(name, cpu_devices)` makes: default, mirrored or multi_worker.

    Args:
        name: a name of STRATEGIES.
        cpu_devices: logical CPU devices asked for (None: 1).
        environ: the environment holding TF_CONFIG / CLUSTER_SPEC (default os.environ).
        gpus: the number of local GPUs (default: those TensorFlow sees; listing
            them does not initialise it).

    Raises:
        ValueError: an unknown name, or TF_CONFIG / CLUSTER_SPEC is malformed.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of: {', '.join(STRATEGIES)}.")
    task = cluster.task(environ)
    if name != "auto":
        return name
    if task.multi_worker:
        return "multi_worker"
    gpus = len(tf.config.list_physical_devices("GPU")) if gpus is None else gpus
    return "mirrored" if gpus > 1 or (not gpus and (cpu_devices or 1) > 1) else "default"


def make_strategy(name="auto", cpu_devices=None, communication="auto"):
    """A tf.distribute strategy.

    Call it first: splitting the CPU and MultiWorkerMirroredStrategy both
    need TensorFlow not yet initialised.

    Args:
        name: "default" (one device); "mirrored" (every local GPU, else every
            logical CPU); "multi_worker" (MultiWorkerMirroredStrategy over the
            tasks of TF_CONFIG, or of Vertex AI's CLUSTER_SPEC, translated to
            TF_CONFIG when only it is set); or "auto": multi_worker when the
            cluster has several chief/worker tasks, mirrored when there are
            several GPUs (or `cpu_devices` > 1), else default.
        cpu_devices: split the CPU into this many logical devices first (None: leave it).
        communication: collectives of multi_worker: "ring" (gRPC, for CPUs),
            "nccl" (GPUs) or "auto" (ring without GPUs, else NCCL).

    Raises:
        ValueError: an unknown name, or TF_CONFIG / CLUSTER_SPEC is malformed.
        RuntimeError: TensorFlow was initialised before the CPU split or the
            multi-worker strategy.
    """
    if communication not in COMMUNICATIONS:
        raise ValueError(f"Unknown communication {communication!r}; expected one of: "
                         f"{', '.join(COMMUNICATIONS)}.")
    name = choose(name, cpu_devices)  # checks TF_CONFIG / CLUSTER_SPEC
    task = cluster.task()
    if cpu_devices is not None:
        split_cpu(cpu_devices)
    gpus = tf.config.list_physical_devices("GPU")  # does not initialise TensorFlow
    if name == "multi_worker":
        cluster.ensure_tf_config()
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=_communication(communication, gpus))
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except (RuntimeError, ValueError) as e:
            if "initialized" not in str(e) and "startup" not in str(e):
                raise
            raise RuntimeError(
                "multi_worker: TensorFlow is already initialised; create the strategy before "
                "anything else runs a TensorFlow op.") from None
    if task.multi_worker:
        print(f"Note: the cluster has {task.num_workers} workers but strategy {name!r} trains "
              "each process alone; use multi_worker (or auto) to train them together.",
              file=sys.stderr)
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    return tf.distribute.get_strategy()


def num_workers(strategy):
    """Worker processes training under `strategy` (1 unless it is multi-worker)."""
    return cluster.strategy_task(strategy).num_workers


def describe(strategy):
    """A short description, e.g. "multi_worker: 2 workers, 2 replicas"."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        kind = "multi_worker"
    elif isinstance(strategy, tf.distribute.MirroredStrategy):
        kind = "mirrored"
    elif strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        kind = "default"
    else:
        kind = type(strategy).__name__
    workers = num_workers(strategy)
    replicas = strategy.num_replicas_in_sync
    text = f"{kind}: {replicas} replica{'s' if replicas != 1 else ''}"
    return text if workers == 1 else f"{kind}: {workers} workers, {replicas} replicas"


def shard_policy(num_files, workers):
    """How to shard an input of `num_files` files over `workers`: FILE if each gets one, else DATA."""
    if workers <= 1:
        return SHARD_POLICIES["off"]
    return SHARD_POLICIES["file" if num_files >= workers else "data"]


def as_shard_policy(policy):
    """A tf.data AutoShardPolicy from itself or its name (auto, file, data, off)."""
    if isinstance(policy, tf.data.experimental.AutoShardPolicy):
        return policy
    if isinstance(policy, str) and policy.lower() in SHARD_POLICIES:
        return SHARD_POLICIES[policy.lower()]
    raise ValueError(f"Unknown shard policy {policy!r}; expected one of: {', '.join(SHARD_POLICIES)} "
                     "or a tf.data.experimental.AutoShardPolicy.")


def with_shard_policy(dataset, policy):
    """`dataset` with its auto-shard policy set (how a multi-worker strategy splits it over workers)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = as_shard_policy(policy)
    return dataset.with_options(options)
