"""The cluster a process trains in: TF_CONFIG, Vertex AI's CLUSTER_SPEC and its AIP_* directories.

TF_CONFIG (what MultiWorkerMirroredStrategy reads) is a JSON object
`{"cluster": {"chief": ["host:port"], "worker": ["host:port", ...]},
"task": {"type": "worker", "index": 0}}`. Vertex AI sets it for TensorFlow
jobs of several replicas; custom containers also get CLUSTER_SPEC, the same
with worker pools for task types: `workerpool0` (the primary replica, here
the chief), `workerpool1` (workers), `workerpool2` (parameter servers) and
`workerpool3` (evaluators, left out of the cluster as TensorFlow expects).

The chief is the `chief` task, or worker 0 when there is none. Only the chief
writes the run directory; every other worker writes what it must (the
checkpoints MultiWorkerMirroredStrategy needs every worker to save) to a
temporary directory of its own that it removes (`write_dir`).
"""

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile

TF_CONFIG = "TF_CONFIG"
CLUSTER_SPEC = "CLUSTER_SPEC"
# Task types that train (every other type, such as ps or evaluator, does not).
TRAINING_TYPES = ("chief", "worker")
# Vertex AI worker pools, in order, as TF_CONFIG task types.
POOL_TYPES = {"workerpool0": "chief", "workerpool1": "worker", "workerpool2": "ps",
              "workerpool3": "evaluator"}
# Vertex AI's output directories (set when the job has a base output directory):
# <base>/model/, <base>/checkpoints/ and <base>/logs/.
AIP_DIRS = {"model_dir": "AIP_MODEL_DIR", "checkpoint_dir": "AIP_CHECKPOINT_DIR",
            "tensorboard_dir": "AIP_TENSORBOARD_LOG_DIR"}
_AIP_NAMES = {"model_dir": "model", "checkpoint_dir": "checkpoints", "tensorboard_dir": "logs"}


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in the cluster.

    Attributes:
        type: the task type ("chief", "worker", "ps", "evaluator", ...);
            "worker" when there is no cluster.
        index: the task's index among its type.
        is_chief: whether this task writes the run directory.
        num_workers: tasks that train (chief and workers); 1 without a cluster.
        cluster: task type -> list of "host:port" ({} without a cluster).
    """

    type: str = "worker"
    index: int = 0
    is_chief: bool = True
    num_workers: int = 1
    cluster: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self):
        """"type:index", e.g. "worker:1"."""
        return f"{self.type}:{self.index}"

    @property
    def multi_worker(self):
        """Whether several tasks train together."""
        return self.num_workers > 1


@dataclasses.dataclass(frozen=True)
class Dirs:
    """Output directories Vertex AI gives a job (None where unset).

    Attributes:
        model_dir: AIP_MODEL_DIR, for the final model.
        checkpoint_dir: AIP_CHECKPOINT_DIR.
        tensorboard_dir: AIP_TENSORBOARD_LOG_DIR.
        run_dir: the base output directory when the three are its `model`,
            `checkpoints` and `logs` folders (as Vertex AI sets them): a run
            directory whose checkpoints/ and logs/ are exactly those.
    """

    model_dir: str = None
    checkpoint_dir: str = None
    tensorboard_dir: str = None
    run_dir: str = None


# === Parsing ===
def _load_json(text, variable):
    try:
        value = json.loads(text)
    except ValueError as e:
        detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise ValueError(f"{variable} is not valid JSON ({detail}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"{variable} must be a JSON object, got {type(value).__name__}.")
    return value


def _check_cluster(cluster, variable):
    """The cluster dict checked: task type -> list of "host:port" strings."""
    if cluster is None:
        return {}
    if not isinstance(cluster, dict):
        raise ValueError(f"{variable} \"cluster\" must be an object of task type -> addresses, "
                         f"got {type(cluster).__name__}.")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list):
            raise ValueError(f"{variable} cluster[{kind!r}] must be a list of \"host:port\" strings, "
                             f"got {type(addresses).__name__}.")
        for i, address in enumerate(addresses):
            host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
            if not host or not port.isdigit():
                raise ValueError(f"{variable} cluster[{kind!r}][{i}] is {address!r}, not \"host:port\".")
    chiefs = len(cluster.get("chief", []))
    if chiefs > 1:
        raise ValueError(f"{variable} cluster['chief'] has {chiefs} tasks; expected at most 1.")
    return {kind: list(addresses) for kind, addresses in cluster.items() if addresses}


def _check_task(task, cluster, variable, outside=("evaluator",)):
    """(type, index) of the task dict, checked against the cluster."""
    if not cluster:
        if task is None:
            return "worker", 0
    elif task is None:
        raise ValueError(f"{variable} has a cluster but no \"task\" "
                         "({\"type\": ..., \"index\": ...}).")
    if not isinstance(task, dict):
        raise ValueError(f"{variable} \"task\" must be an object {{\"type\": ..., \"index\": ...}}, "
                         f"got {type(task).__name__}.")
    kind, index = task.get("type", "worker" if not cluster else None), task.get("index", 0)
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{variable} task type must be a non-empty string, got {kind!r}.")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"{variable} task index must be an integer of at least 0, got {index!r}.")
    if cluster and kind not in outside:
        if kind not in cluster:
            raise ValueError(f"{variable} task type {kind!r} is not in its cluster "
                             f"({', '.join(cluster)}).")
        if index >= len(cluster[kind]):
            raise ValueError(f"{variable} task index {index} is out of range: cluster[{kind!r}] has "
                             f"{len(cluster[kind])} task{'s' if len(cluster[kind]) != 1 else ''}.")
    return kind, index


def parse_tf_config(text, variable=TF_CONFIG):
    """The TF_CONFIG JSON `text` as a dict {"cluster", "task", ...}, checked.

    Raises:
        ValueError: one line naming `variable` and what is wrong.
    """
    config = _load_json(text, variable)
    cluster = _check_cluster(config.get("cluster"), variable)
    kind, index = _check_task(config.get("task"), cluster, variable)
    return {**config, "cluster": cluster, "task": {**(config.get("task") or {}), "type": kind,
                                                   "index": index}}


def parse_cluster_spec(text, variable=CLUSTER_SPEC):
    """Vertex AI's CLUSTER_SPEC JSON `text` translated to a TF_CONFIG dict.

    workerpool0 becomes the chief, workerpool1 the workers, workerpool2 the
    parameter servers; workerpool3 (evaluators) stays out of the cluster, the
    task of an evaluator being {"type": "evaluator", "index": i}.

    Raises:
        ValueError: one line naming `variable` and what is wrong.
    """
    spec = _load_json(text, variable)
    pools = _check_cluster(spec.get("cluster"), variable)
    unknown = [name for name in pools if name not in POOL_TYPES]
    if unknown:
        raise ValueError(f"{variable} cluster has {unknown[0]!r}, not a Vertex AI worker pool "
                         f"({', '.join(POOL_TYPES)}).")
    pool, index = _check_task(spec.get("task"), pools, variable, outside=())
    if pools and pool not in POOL_TYPES:
        raise ValueError(f"{variable} task type {pool!r} is not a Vertex AI worker pool.")
    cluster = {POOL_TYPES[name]: addresses for name, addresses in pools.items()
               if POOL_TYPES[name] != "evaluator"}
    config = {"cluster": cluster, "task": {"type": POOL_TYPES.get(pool, pool), "index": index}}
    if "trial" in (spec.get("task") or {}):
        config["task"]["trial"] = spec["task"]["trial"]
    config["environment"] = spec.get("environment", "cloud")
    return config


def tf_config(environ=None):
    """The cluster's TF_CONFIG dict: TF_CONFIG if set, else CLUSTER_SPEC translated, else None."""
    environ = os.environ if environ is None else environ
    if environ.get(TF_CONFIG, "").strip():
        return parse_tf_config(environ[TF_CONFIG])
    if environ.get(CLUSTER_SPEC, "").strip():
        return parse_cluster_spec(environ[CLUSTER_SPEC])
    return None


def ensure_tf_config(environ=None):
    """Sets TF_CONFIG from CLUSTER_SPEC when only CLUSTER_SPEC is set; returns the TF_CONFIG dict or None.

    MultiWorkerMirroredStrategy reads TF_CONFIG; call this before creating it.
    """
    environ = os.environ if environ is None else environ
    config = tf_config(environ)
    if config is not None and not environ.get(TF_CONFIG, "").strip():
        environ[TF_CONFIG] = json.dumps(config)
    return config


def _task(cluster, kind, index):
    workers = sum(len(cluster.get(t, [])) for t in TRAINING_TYPES)
    if workers == 0:
        return Task(kind, index, True, 1, dict(cluster))
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return Task(kind, index, chief, workers, dict(cluster))


def task(environ=None):
    """This process's `Task`, from TF_CONFIG or CLUSTER_SPEC (a single worker without either).

    Raises:
        ValueError: TF_CONFIG or CLUSTER_SPEC is malformed (one line).
    """
    config = tf_config(environ)
    if config is None:
        return Task()
    return _task(config["cluster"], config["task"]["type"], config["task"]["index"])


def strategy_task(strategy):
    """The `Task` of the process running `strategy` (a single worker unless it is multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return Task()
    cluster = resolver.cluster_spec().as_dict()
    if not cluster:
        return Task()
    cluster = {kind: list(addresses.values()) if isinstance(addresses, dict) else list(addresses)
               for kind, addresses in cluster.items()}
    return _task(cluster, resolver.task_type or "worker", int(resolver.task_id or 0))


# === Directories ===
def _strip(path):
    return path.rstrip("/") if path and path.rstrip("/") and not path.endswith("://") else path


def default_dirs(environ=None):
    """The `Dirs` Vertex AI set through AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR."""
    environ = os.environ if environ is None else environ
    found = {field: _strip(environ.get(name, "").strip()) or None for field, name in AIP_DIRS.items()}
    run_dir = None
    if all(found.values()):
        parents = {os.path.dirname(path) for path in found.values()}
        if len(parents) == 1 and all(os.path.basename(found[f]) == n for f, n in _AIP_NAMES.items()):
            run_dir = parents.pop()
    return Dirs(**found, run_dir=run_dir)


def temporary_dir(current=None):
    """A new local temporary directory named after the task; the caller removes it."""
    current = task() if current is None else current
    return tempfile.mkdtemp(prefix=f"tiered_gqn-{current.type}_{current.index}-")


def remove_dir(path):
    """Removes a directory made by `temporary_dir`, warning (not raising) if it cannot."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        print(f"cluster: could not remove {path} ({e.strerror}).", file=sys.stderr)


@contextlib.contextmanager
def write_dir(model_dir, current=None):
    """Where this task writes: `model_dir` on the chief, else a temporary directory removed on exit.

    The pattern TensorFlow documents for MultiWorkerMirroredStrategy: every
    worker saves (saving may take part in collectives), only the chief's copy
    is kept.

    Args:
        model_dir: the run directory.
        current: the `Task` (default: `task()`).
    """
    current = task() if current is None else current
    if current.is_chief:
        yield model_dir
        return
    path = temporary_dir(current)
    try:
        yield path
    finally:
        remove_dir(path)
