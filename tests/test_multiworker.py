"""MultiWorkerMirroredStrategy over two local processes (TF_CONFIG on 127.0.0.1), through loop.Trainer.

Each worker is tests/multiworker_job.py; every wait has a timeout, after
which the job's processes are killed, so that a hung collective cannot hang
the test run.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import write_random_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
JOB = os.path.join(HERE, "multiworker_job.py")
MAX_STEPS = 10
# Largest weight difference allowed between two workers and one process with
# the same global batch (4), data order and seed, after 10 Adam steps of the
# tiny GQN (weights up to about 0.7). Measured: 1.1e-7 (9.3e-8 after 4 steps):
# the all-reduce sums the two workers' gradients in another order than one
# process sums its batch's. The two workers end bit-equal to each other.
TOLERANCE = 1e-5
TIMEOUT = 240


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _checkpoint_steps(model_dir):
    folder = os.path.join(model_dir, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(m.group(1)) for m in map(re.compile(r"^ckpt-(\d+)\.index$").match, names) if m)


def _weights(out, task="worker_0"):
    weights = np.load(os.path.join(out, f"weights_{task}.npz"))
    return [weights[k] for k in weights]


def _gap(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


class Job:
    """The two worker processes of one run of the job; output in files under `logs`."""

    def __init__(self, data, model_dir, out, logs, *flags):
        ports = _free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        os.makedirs(logs, exist_ok=True)
        self.tmp = os.path.join(logs, "tmp")  # where the non-chief's temporary directory goes
        os.makedirs(self.tmp, exist_ok=True)
        self.logs = logs
        self.processes = []
        for index in range(2):
            env = {**os.environ, "TMPDIR": self.tmp, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                         "index": index}})}
            with open(self._path(index, "out"), "w") as stdout, open(self._path(index, "err"),
                                                                      "w") as stderr:
                self.processes.append(subprocess.Popen(
                    [sys.executable, JOB, "--data_dir", str(data), "--model_dir", str(model_dir),
                     "--out", str(out), "--max_steps", str(MAX_STEPS), *flags],
                    cwd=ROOT, env=env, stdout=stdout, stderr=stderr))
        self.deadline = time.time() + TIMEOUT

    def _path(self, index, kind):
        return os.path.join(self.logs, f"worker{index}.{kind}")

    def output(self, index, kind="out"):
        with open(self._path(index, kind)) as f:
            return f.read()

    def kill(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def wait_for(self, condition, what):
        """Polls `condition()` until true; fails (killing the job) on a timeout or an early exit."""
        while not condition():
            exited = [i for i, p in enumerate(self.processes) if p.poll() is not None]
            if exited or time.time() > self.deadline:
                self.kill()
                pytest.fail(f"waiting for {what}: " + (f"worker {exited[0]} exited: "
                            f"{self.output(exited[0], 'err')[-3000:]}" if exited else "timed out"))
            time.sleep(0.05)

    def wait(self, timeout=None):
        """The workers' exit codes once both exit; kills them all after the timeout."""
        deadline = self.deadline if timeout is None else time.time() + timeout
        codes = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=max(deadline - time.time(), 1)))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"the job did not end in time: {self.output(0, 'err')[-2000:]}")
        return codes

    def expect_success(self):
        codes = self.wait()
        for index, code in enumerate(codes):
            assert code == 0, self.output(index, "err")[-3000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_random_dataset(str(root), scenes=(12, 2), shards=(3, 1))
    return root


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    """The weights of the same run in one process under the default strategy."""
    folder = tmp_path_factory.mktemp("one")
    done = subprocess.run([sys.executable, JOB, "--data_dir", str(data), "--model_dir",
                           str(folder / "run"), "--out", str(folder / "out"), "--strategy", "default",
                           "--max_steps", str(MAX_STEPS)],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return _weights(folder / "out")


def test_two_workers_train_like_one_process_and_only_the_chief_writes(data, one_process, tmp_path):
    job = Job(data, tmp_path / "run", tmp_path / "out", tmp_path / "logs")
    job.expect_success()
    for index in range(2):
        out = job.output(index)
        assert f"start 0 0 multi_worker: 2 workers, 2 replicas worker:{index}" in out, out
        assert f"done {MAX_STEPS}" in out
    chief, worker = _weights(tmp_path / "out"), _weights(tmp_path / "out", "worker_1")
    assert _gap(chief, worker) == 0.0
    print("gap to one process", _gap(chief, one_process))
    assert _gap(chief, one_process) <= TOLERANCE
    # The chief alone wrote the run directory; the other worker's copies are gone.
    assert os.listdir(tmp_path / "run") == ["checkpoints"]
    assert _checkpoint_steps(tmp_path / "run") == [MAX_STEPS - 4, MAX_STEPS - 2, MAX_STEPS]
    assert not [name for name in os.listdir(job.tmp) if name.startswith("tiered_gqn-")]


def test_sigterm_stops_every_worker_at_one_checkpoint_and_a_killed_worker_resumes(
        data, one_process, tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    slow = ("--step_seconds", "0.3")
    # SIGTERM to worker 1 alone: both stop after the same step, with the chief's checkpoint of it.
    job = Job(data, run, out, tmp_path / "logs1", *slow)
    job.wait_for(lambda: 2 in _checkpoint_steps(run), "checkpoint 2")
    job.processes[1].send_signal(signal.SIGTERM)
    assert job.wait() == [128 + signal.SIGTERM] * 2, job.output(0, "err")[-3000:]
    stopped = {re.search(r"^interrupted (\d+)$", job.output(i), re.M).group(1) for i in range(2)}
    assert len(stopped) == 1, stopped
    stopped = int(stopped.pop())
    assert stopped < MAX_STEPS - 2, "SIGTERM came too late to test the rest"
    assert _checkpoint_steps(run)[-1] == stopped
    assert "(another worker was interrupted)" in job.output(0, "err")

    # Restarted, the job resumes there; SIGKILL worker 1 after a newer checkpoint.
    job = Job(data, run, out, tmp_path / "logs2", *slow)
    job.wait_for(lambda: all("start" in job.output(i) for i in range(2)), "the restart")
    for index in range(2):
        assert f"start {stopped} {stopped} " in job.output(index)
    job.wait_for(lambda: _checkpoint_steps(run)[-1] > stopped, "a newer checkpoint")
    job.processes[1].send_signal(signal.SIGKILL)
    killed_after = _checkpoint_steps(run)[-1]
    assert killed_after < MAX_STEPS, "the kill came after the run had finished"
    codes = job.wait(timeout=90)  # the chief's next collective fails once worker 1 is missed
    assert codes[0] == 1 and "WorkerLost: a collective failed" in job.output(0, "err"), (
        job.output(0, "err")[-3000:])

    # Restarted again, it continues from the chief's latest checkpoint and ends like one process.
    job = Job(data, run, out, tmp_path / "logs3")
    job.expect_success()
    resumed = int(re.search(r"^start (\d+) ", job.output(0), re.M).group(1))
    assert killed_after <= resumed < MAX_STEPS
    assert f"done {MAX_STEPS}" in job.output(1)
    print("stopped", stopped, "killed after", killed_after, "resumed", resumed,
          "gap", _gap(_weights(out), one_process))
    assert _gap(_weights(out), one_process) <= TOLERANCE


def test_workers_sharded_by_file_stay_in_step_and_resume_exactly(data, one_process, tmp_path):
    # Uninterrupted: worker 0 reads shards 0 and 2, worker 1 shard 1, two scenes a step each.
    job = Job(data, tmp_path / "run", tmp_path / "out", tmp_path / "logs", "--by_file")
    job.expect_success()
    whole = _weights(tmp_path / "out")
    assert _gap(whole, _weights(tmp_path / "out", "worker_1")) == 0.0
    assert _gap(whole, one_process) > 100 * TOLERANCE  # other batches than one process's
    # Stopped at step 6 and restarted: each worker's stream resumes at its own batch 6.
    run, out = tmp_path / "run2", tmp_path / "out2"
    job = Job(data, run, out, tmp_path / "logs2", "--by_file", "--max_steps", "6")
    job.expect_success()
    job = Job(data, run, out, tmp_path / "logs3", "--by_file")
    job.expect_success()
    assert "start 6 6 " in job.output(0) and f"done {MAX_STEPS}" in job.output(1)
    assert _gap(_weights(out), whole) <= TOLERANCE
