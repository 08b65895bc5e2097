"""Signals at any moment, and the one-line errors and exit codes of every command."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import own_lines
from tiered_gqn import interrupts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def handlers():
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupts.install()
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])


def test_a_signal_outside_deferred_raises_at_once(handlers):
    with pytest.raises(interrupts.Interrupted) as raised:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert raised.value.signum == signal.SIGTERM
    assert isinstance(raised.value, KeyboardInterrupt)


def test_signals_inside_deferred_wait_for_its_end_and_raise_once(handlers):
    finished = []
    with pytest.raises(interrupts.Interrupted) as raised:
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            with interrupts.deferred():  # nested: still deferred
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
            assert interrupts.requested() == signal.SIGINT
            finished.append(True)
    assert finished == [True] and raised.value.signum == signal.SIGINT
    assert interrupts.requested() is None
    with interrupts.deferred():  # nothing pending: leaves quietly
        pass


def test_an_error_inside_deferred_is_not_masked_by_the_interrupt(handlers):
    with pytest.raises(ValueError):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            raise ValueError("inner")
    interrupts.install()  # clears the pending signal


PROGRAM = textwrap.dedent('''
    import sys
    from absl import flags
    from tiered_gqn import cli
    flags.DEFINE_string("what", "ok", "What main does.")
    def main(argv):
        what = flags.FLAGS.what
        if what == "value":
            raise ValueError("--what value is not allowed; expected ok")
        if what == "missing":
            open("/nonexistent/file.txt")
        if what == "bug":
            raise RuntimeError("something broke")
        print("ran")
    cli.run(main)
''')


@pytest.mark.parametrize("args, code, line", [
    ([], 0, None),
    (["--help"], 0, None),
    (["--no_such_flag"], 2, "prog: error: Unknown command line flag 'no_such_flag' (see --help)"),
    (["--what"], 2, "prog: error: Missing value for flag --what (see --help)"),
    (["--what", "value"], 2, "prog: error: --what value is not allowed; expected ok"),
    (["--what", "missing"], 2, "prog: error: /nonexistent/file.txt: No such file or directory"),
    (["--what", "bug"], 1, "prog: error: something broke (RuntimeError; --verbose shows the traceback)"),
])
def test_the_runner_turns_errors_into_one_line_and_an_exit_code(tmp_path, args, code, line):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    if line is not None:
        assert own_lines(done.stderr) == [line]


def test_verbose_shows_the_traceback(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    done = subprocess.run([sys.executable, str(script), "--what", "bug", "--verbose"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1 and "Traceback" in done.stderr and "RuntimeError" in done.stderr


@pytest.mark.slow
def test_sigterm_while_the_embedded_data_renders_leaves_no_partial_folder(tmp_path):
    env = {**os.environ, "TIERED_GQN_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.train_gqn", "--preset", "tiny", "--model_dir", str(tmp_path / "m")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.startswith("First use: rendering"):
            break
    cache = pathlib.Path(tmp_path / "cache")
    deadline = time.time() + 120
    while not list(cache.glob("*/.partial-*/*/train/*.tfrecord")):  # rendering has begun
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    err = process.stderr.read()
    assert process.wait(timeout=60) == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "train_gqn: interrupted (SIGTERM)."
    assert not list(cache.glob("*/.partial-*")) and not list(cache.glob("*/*/COMPLETE"))
