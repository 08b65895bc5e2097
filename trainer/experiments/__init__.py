"""Experiments built on the library, each a command: `python -m trainer.experiments.<name>`.

- `transfer`: the tiered-representation transfer studies (DESIGN §5; docs/transfer.md).
- `gen_memory`: GEN spatial memory against the summed GQN representation (docs/gen.md).
"""


def format_duration(seconds):
    """"1 h 02 min", "12 min 05 s" or "42 s"."""
    seconds = int(round(max(seconds, 0)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"
