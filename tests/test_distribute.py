"""Strategies, the cluster description, and the training loop over several replicas in one process.

Each run over 2 logical CPUs is a subprocess: the CPU can only be split
before TensorFlow initialises.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import write_random_dataset
from tiered_gqn.training import cluster, distribute

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
JOB = os.path.join(HERE, "multiworker_job.py")
# Largest weight difference allowed between a run on one device and one over
# 2 replicas after 4 Adam steps of the tiny GQN with the same global batch
# and seed; measured: 9.3e-8 (weights up to 0.7; the gradients are summed in
# another order). Replicas drawing the same noise (the old defect) differ by 7e-3.
TOLERANCE = 1e-5


def _python(script, timeout=240):
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _train(tmp_path, data, name, *flags):
    out = tmp_path / f"out_{name}"
    done = subprocess.run([sys.executable, JOB, "--data_dir", str(data), "--model_dir",
                           str(tmp_path / name), "--out", str(out), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done 4" in done.stdout, done.stdout
    weights = np.load(out / "weights_worker_0.npz")
    return [weights[k] for k in weights], done.stdout


def _gap(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


# === Training over 2 replicas ===
@pytest.mark.slow
def test_mirrored_over_two_cpus_trains_like_one_device(tmp_path):
    data = tmp_path / "data"
    write_random_dataset(str(data), scenes=(12, 2), shards=(3, 1))
    one, _ = _train(tmp_path, data, "one", "--strategy", "default")
    two, out = _train(tmp_path, data, "two", "--strategy", "mirrored", "--cpu_devices", "2")
    assert "mirrored: 2 replicas" in out
    print("gap", _gap(one, two))
    assert _gap(one, two) <= TOLERANCE
    # The test can fail: replicas that draw the same noise train otherwise.
    same, _ = _train(tmp_path, data, "same", "--strategy", "mirrored", "--cpu_devices", "2",
                     "--same_noise")
    assert _gap(one, same) > 100 * TOLERANCE


NOISE = textwrap.dedent('''
    from tiered_gqn.training import distribute
    mirrored = distribute.make_strategy("mirrored", cpu_devices=2)
    import keras, numpy as np, tensorflow as tf
    from tiered_gqn.models import draw

    def decoder(strategy):
        with strategy.scope():
            return draw.ConvDRAW(image_size=16, num_steps=2, h_dim=4, z_dim=2, canvas_dim=4, seed=5)

    def draws(strategy, seed):
        model = decoder(strategy)
        @tf.function
        def run():
            return strategy.run(lambda: [model._noise((3, 4, 4, 2), step, seed) for step in (0, 1)])
        return [np.concatenate([np.asarray(v) for v in strategy.experimental_local_results(step)])
                for step in run()]

    one = tf.distribute.get_strategy()
    assert mirrored.num_replicas_in_sync == 2
    for seed in (None, 11):  # the seed generator's stream, and a fixed seed
        two, again, alone = draws(mirrored, seed), draws(mirrored, seed), draws(one, seed)
        for step in range(2):
            assert two[step].shape == (6, 4, 4, 2)
            assert not np.allclose(two[step][:3], two[step][3:])  # replicas differ
            np.testing.assert_array_equal(two[step], again[step])  # the seed reproduces them
        assert not np.allclose(two[0], two[1])  # steps differ
    # One device drawing 3 examples draws what the first replica draws.
    alone = draws(one, 11)
    assert alone[0].shape == (3, 4, 4, 2)
    np.testing.assert_array_equal(alone[0], draws(mirrored, 11)[0][:3])
    print("ok")
''')


def test_replicas_draw_independent_noise_that_the_seed_reproduces():
    assert _python(NOISE).strip().endswith("ok")


# A deterministic stand-in model, so that XLA and plain steps must agree.
XLA = textwrap.dedent('''
    from tiered_gqn.training import distribute
    mirrored = distribute.make_strategy("mirrored", cpu_devices=2)
    import tempfile
    import keras, numpy as np, tensorflow as tf
    from tiered_gqn.training import loop

    class Linear(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3, kernel_initializer="ones", name="dense")
            self.dense.build((None, 7))

        def compute_losses(self, batch, sigma, training=True, seed=None, step=None):
            assert sigma is None  # no pixel_sigma
            (frames, cameras, query), target = batch
            error = tf.reduce_sum(tf.square(self.dense(query) - target[:, 0, 0]), axis=1)
            return {"loss": error, "error": error}

    def run(jit_compile, batch_size=8):
        with mirrored.scope():
            model = Linear()
            optimizer = keras.optimizers.SGD(0.1)
            optimizer.build(model.trainable_variables)
        rng = np.random.default_rng(0)
        n = batch_size
        data = tf.data.Dataset.from_tensors((
            (np.zeros((n, 1, 4, 4, 3), np.float32), np.zeros((n, 1, 7), np.float32),
             rng.normal(size=(n, 7)).astype(np.float32)),
            rng.normal(size=(n, 4, 4, 3)).astype(np.float32))).repeat()
        trainer = loop.Trainer(model, optimizer, mirrored, n, tempfile.mkdtemp(),
                               jit_compile=jit_compile)
        metrics = trainer.fit(data, max_steps=3, checkpoint_every=10, verbose=False)
        return model.dense.kernel.numpy(), metrics

    plain, m1 = run(False)
    xla, m2 = run(True)
    np.testing.assert_allclose(plain, xla, rtol=1e-5)
    assert set(m1) == {"error"} and abs(m1["error"] - m2["error"]) < 1e-4 * m1["error"], (m1, m2)
    try:
        run(False, batch_size=5)
    except ValueError as e:
        print("uneven:", e)
    print("ok")
''')


def test_xla_steps_run_over_two_replicas_and_the_batch_must_split_evenly():
    out = _python(XLA)
    assert out.strip().endswith("ok")
    assert "uneven: global_batch_size 5 does not split evenly over 2 replicas; use a multiple of 2." in out


def test_splitting_the_cpu_after_tensorflow_started_is_a_one_line_error():
    script = textwrap.dedent('''
        import tensorflow as tf
        from tiered_gqn.training import distribute
        print(float(tf.constant(1.0) + 1))
        try:
            distribute.make_strategy("mirrored", cpu_devices=2)
        except RuntimeError as e:
            print("error:", e)
    ''')
    out = _python(script)
    line = [x for x in out.splitlines() if x.startswith("error:")]
    assert line == ["error: cpu_devices=2: TensorFlow is already initialised, so the CPU can no "
                    "longer be split; choose the strategy before anything else runs a TensorFlow op."]


# === Reporting the terms of other models ===
def test_the_loop_reports_every_term_of_a_model_without_sigma_or_generate(tmp_path, capsys):
    import keras
    import tensorflow as tf

    from tiered_gqn.training import loop

    class Head(keras.Model):
        progress_terms = ("accuracy", "missing")

        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1, name="dense")
            self.dense.build((None, 7))
            self.sigmas = []

        def compute_losses(self, batch, sigma, training=True, seed=None, step=None):
            self.sigmas.append(sigma)
            (_, _, query), target = batch
            error = tf.square(self.dense(query)[:, 0] - target)
            return {"loss": error, "accuracy": tf.cast(error < 1.0, tf.float32),
                    "scale": tf.reduce_mean(error)}  # a scalar: averaged over replicas

    model = Head()
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    batch = ((np.zeros((4, 1, 4, 4, 3), np.float32), np.zeros((4, 1, 7), np.float32),
              rng.normal(size=(4, 7)).astype(np.float32)), rng.normal(size=(4,)).astype(np.float32))
    data = tf.data.Dataset.from_tensors(batch).repeat()
    trainer = loop.Trainer(model, optimizer, tf.distribute.get_strategy(), 4, str(tmp_path))
    metrics = trainer.fit(data, max_steps=2, checkpoint_every=10, verbose=True)
    assert list(metrics) == ["accuracy", "scale"]
    assert set(model.sigmas) == {None} and trainer.sigma() is None
    shown = capsys.readouterr().out
    assert "accuracy:" in shown and "sigma" not in shown and "scale" not in shown
    assert set(trainer.evaluate([batch])) == {"accuracy", "scale"}  # no sample_mse without generate


# === Choosing the strategy ===
def _tf_config(kind, index, workers=2, chief=False):
    cluster_ = {"worker": [f"127.0.0.1:{2000 + i}" for i in range(workers)]}
    if chief:
        cluster_["chief"] = ["127.0.0.1:1999"]
    return json.dumps({"cluster": cluster_, "task": {"type": kind, "index": index}})


def test_choose_picks_multi_worker_for_a_cluster_then_mirrored_for_several_devices():
    assert distribute.choose("auto", environ={"TF_CONFIG": _tf_config("worker", 1)}, gpus=0) == (
        "multi_worker")
    one = {"TF_CONFIG": _tf_config("worker", 0, workers=1)}
    assert distribute.choose("auto", environ=one, gpus=0) == "default"
    assert distribute.choose("auto", environ={}, gpus=2) == "mirrored"
    assert distribute.choose("auto", environ={}, gpus=1, cpu_devices=2) == "default"
    assert distribute.choose("auto", environ={}, gpus=0, cpu_devices=2) == "mirrored"
    assert distribute.choose("mirrored", environ={}, gpus=0) == "mirrored"
    with pytest.raises(ValueError, match=r"^Unknown strategy 'tpu'; expected one of: auto, default, "
                                         r"mirrored, multi_worker\.$"):
        distribute.choose("tpu", environ={})
    with pytest.raises(ValueError, match="^TF_CONFIG is not valid JSON"):
        distribute.choose("auto", environ={"TF_CONFIG": "{"})


def test_shard_policy_is_file_with_a_file_per_worker_else_data():
    import tensorflow as tf

    policy = tf.data.experimental.AutoShardPolicy
    assert distribute.shard_policy(4, 2) == policy.FILE
    assert distribute.shard_policy(1, 2) == policy.DATA
    assert distribute.as_shard_policy("DATA") == policy.DATA
    with pytest.raises(ValueError, match="^Unknown shard policy 'files'"):
        distribute.as_shard_policy("files")


# === The cluster ===
def test_tf_config_tasks_and_chief_election():
    chief = cluster.task({"TF_CONFIG": _tf_config("chief", 0, chief=True)})
    assert (chief.type, chief.index, chief.is_chief, chief.num_workers) == ("chief", 0, True, 3)
    worker0 = cluster.task({"TF_CONFIG": _tf_config("worker", 0, chief=True)})
    assert not worker0.is_chief and worker0.multi_worker and worker0.name == "worker:0"
    # Without a chief task, worker 0 is the chief.
    assert cluster.task({"TF_CONFIG": _tf_config("worker", 0)}).is_chief
    assert not cluster.task({"TF_CONFIG": _tf_config("worker", 1)}).is_chief
    # Parameter servers and evaluators do not train.
    ps = json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "ps", "index": 0}})
    assert (cluster.task({"TF_CONFIG": ps}).is_chief, cluster.task({"TF_CONFIG": ps}).num_workers) == (
        False, 1)
    evaluator = json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}})
    assert not cluster.task({"TF_CONFIG": evaluator}).is_chief
    # No cluster: one worker, the chief.
    assert cluster.task({}) == cluster.Task()
    assert cluster.task({"TF_CONFIG": "  "}).is_chief


VERTEX = {"cluster": {"workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
                      "workerpool1": ["cmle-training-workerpool1-ab-0:2222",
                                      "cmle-training-workerpool1-ab-1:2222"],
                      "workerpool2": ["cmle-training-workerpool2-ab-0:2222"],
                      "workerpool3": ["cmle-training-workerpool3-ab-0:2222"]},
          "environment": "cloud", "task": {"type": "workerpool1", "index": 1, "trial": "3"},
          "job": "{}"}


def test_cluster_spec_becomes_tf_config_when_only_it_is_set():
    environ = {"CLUSTER_SPEC": json.dumps(VERTEX)}
    config = cluster.ensure_tf_config(environ)
    assert config["cluster"] == {"chief": ["cmle-training-workerpool0-ab-0:2222"],
                                 "worker": ["cmle-training-workerpool1-ab-0:2222",
                                            "cmle-training-workerpool1-ab-1:2222"],
                                 "ps": ["cmle-training-workerpool2-ab-0:2222"]}
    assert config["task"] == {"type": "worker", "index": 1, "trial": "3"}
    assert json.loads(environ["TF_CONFIG"]) == config
    task = cluster.task(environ)
    assert (task.type, task.index, task.is_chief, task.num_workers) == ("worker", 1, False, 3)
    primary = {"CLUSTER_SPEC": json.dumps({**VERTEX, "task": {"type": "workerpool0", "index": 0}})}
    assert cluster.task(primary).is_chief and cluster.task(primary).type == "chief"
    evaluator = {"CLUSTER_SPEC": json.dumps({**VERTEX, "task": {"type": "workerpool3", "index": 0}})}
    assert cluster.task(evaluator).type == "evaluator" and not cluster.task(evaluator).is_chief
    # A TF_CONFIG already set wins and is left alone.
    both = {"CLUSTER_SPEC": json.dumps(VERTEX), "TF_CONFIG": _tf_config("worker", 0)}
    cluster.ensure_tf_config(both)
    assert both["TF_CONFIG"] == _tf_config("worker", 0) and cluster.task(both).is_chief


@pytest.mark.parametrize("variable,value,message", [
    ("TF_CONFIG", "{'cluster': 1}", r"^TF_CONFIG is not valid JSON \(Expecting property name "
                                    r"enclosed in double quotes at column 2\)\.$"),
    ("TF_CONFIG", "[1]", r"^TF_CONFIG must be a JSON object, got list\.$"),
    ("TF_CONFIG", '{"cluster": ["a:1"]}', r"^TF_CONFIG \"cluster\" must be an object"),
    ("TF_CONFIG", '{"cluster": {"worker": "a:1"}}',
     r"^TF_CONFIG cluster\['worker'\] must be a list of \"host:port\" strings, got str\.$"),
    ("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}',
     r"^TF_CONFIG cluster\['worker'\]\[1\] is 'b', not \"host:port\"\.$"),
    ("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}}', r"^TF_CONFIG has a cluster but no \"task\""),
    ("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     r"^TF_CONFIG task type 'chief' is not in its cluster \(worker\)\.$"),
    ("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     r"^TF_CONFIG task index 2 is out of range: cluster\['worker'\] has 2 tasks\.$"),
    ("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": -1}}',
     r"^TF_CONFIG task index must be an integer of at least 0, got -1\.$"),
    ("TF_CONFIG", '{"cluster": {"chief": ["a:1", "b:2"]}, "task": {"type": "chief", "index": 0}}',
     r"^TF_CONFIG cluster\['chief'\] has 2 tasks; expected at most 1\.$"),
    ("CLUSTER_SPEC", '{"cluster": {"pool0": ["a:1"]}, "task": {"type": "pool0", "index": 0}}',
     r"^CLUSTER_SPEC cluster has 'pool0', not a Vertex AI worker pool \(workerpool0, "),
    ("CLUSTER_SPEC", '{"cluster": {"workerpool0": ["a:1"]}, "task": {"type": "workerpool1"}}',
     r"^CLUSTER_SPEC task type 'workerpool1' is not in its cluster \(workerpool0\)\.$"),
])
def test_malformed_cluster_descriptions_are_one_line_errors(variable, value, message):
    with pytest.raises(ValueError, match=message) as info:
        cluster.task({variable: value})
    assert "\n" not in str(info.value)


def test_default_dirs_follow_the_vertex_layout():
    base = "gs://bucket/job/3"
    environ = {"AIP_MODEL_DIR": f"{base}/model/", "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
               "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/"}
    assert cluster.default_dirs(environ) == cluster.Dirs(
        f"{base}/model", f"{base}/checkpoints", f"{base}/logs", run_dir=base)
    partial = cluster.default_dirs({"AIP_MODEL_DIR": "gs://b/m"})
    assert partial == cluster.Dirs(model_dir="gs://b/m")
    assert cluster.default_dirs({}) == cluster.Dirs()
    elsewhere = {**environ, "AIP_CHECKPOINT_DIR": "gs://other/ckpt"}
    assert cluster.default_dirs(elsewhere).run_dir is None


def test_only_the_chief_writes_to_the_run_directory(tmp_path):
    chief = cluster.Task("chief", 0, True, 2)
    with cluster.write_dir(str(tmp_path), chief) as path:
        assert path == str(tmp_path)
    worker = cluster.Task("worker", 0, False, 2)
    with cluster.write_dir(str(tmp_path), worker) as path:
        assert path != str(tmp_path) and os.path.isdir(path) and "worker_0" in path
        open(os.path.join(path, "ckpt"), "w").close()
    assert not os.path.exists(path)
