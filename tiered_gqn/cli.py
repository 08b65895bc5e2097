"""Running a command-line program: one-line errors, exit codes, signals.

Every command (trainers, evaluate, render, generate, benchmarks) starts with
`cli.run(main)` instead of `absl.app.run(main)`:

- flag errors (unknown flag, bad value, missing required flag) print one
  line and exit 2; `--help` exits 0;
- errors caused by the user's input (`ValueError`, missing files, a file
  where a folder was expected, no permission) print one line and exit 2;
- any other failure prints one line and exits 1;
- Ctrl-C and SIGTERM print one line and exit 130 (143 for SIGTERM);
- `--verbose` prints the traceback too.

Signals are handled as `tiered_gqn.interrupts` describes.
"""

import os
import re
import signal
import sys

from absl import app, flags

from tiered_gqn import interrupts

FLAGS = flags.FLAGS
flags.DEFINE_bool("verbose", False, "Print the full traceback of an error.")

USAGE = 2
FAILURE = 1
# Errors that mean the command line or the files it names are wrong.
USAGE_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                PermissionError, FileExistsError)


def program_name():
    """The running command's short name (`train_gqn` for `python -m trainer.train_gqn`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return spec.name.rsplit(".", 1)[-1]
    return os.path.basename(sys.argv[0] or "tiered_gqn").removesuffix(".py")


def error_line(error):
    """The first line of an error's message, or its type when it has none.

    An error raised while tracing a tf.function reads "in user code:", then
    the traceback, then the cause: the cause's message is the one kept.
    """
    text = str(error).strip()
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0] == "in user code:":
        return re.sub(r"^\w+(Error|Exception): ", "", lines[-1])
    return lines[0] if lines else type(error).__name__


def fail(message, code=USAGE):
    """Prints `<program>: error: <message>` on one line and exits with `code`."""
    print(f"{program_name()}: error: {message}", file=sys.stderr)
    sys.exit(code)


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as error:
        fail(f"{error_line(error)} (see --help)")


def _exit_code(error):
    if isinstance(error, USAGE_ERRORS):
        return USAGE
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return FAILURE
    if isinstance(error, (tf.errors.NotFoundError, tf.errors.PermissionDeniedError,
                          tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError)):
        return USAGE
    return FAILURE


def _guarded(main):
    def run_main(argv):
        interrupts.install()
        try:
            return main(argv)
        except SystemExit:
            raise
        except KeyboardInterrupt as error:
            signum = getattr(error, "signum", signal.SIGINT)
            if FLAGS.verbose:
                raise
            print(f"\n{program_name()}: interrupted ({signal.Signals(signum).name}).", file=sys.stderr)
            sys.exit(128 + int(signum))
        except Exception as error:  # every failure becomes one line
            if FLAGS.verbose:
                raise
            code = _exit_code(error)
            hint = "" if code == USAGE else f" ({type(error).__name__}; --verbose shows the traceback)"
            fail(error_line(error) + hint, code)
    return run_main


def run(main, argv=None):
    """`absl.app.run(main)` with one-line errors and this module's exit codes."""
    argv = sys.argv if argv is None else argv
    try:
        app.run(_guarded(main), argv=argv, flags_parser=_parse_flags)
    except SystemExit as done:
        # absl exits 1 after printing --help / --helpfull: that is a success.
        if done.code == 1 and any(a in ("--help", "-?", "--helpshort", "--helpfull", "-h")
                                  for a in argv[1:]):
            sys.exit(0)
        raise
