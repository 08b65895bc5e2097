"""Experiments built on the library, each a command: `python -m trainer.experiments.<name>`.

- `transfer`: the tiered-representation transfer studies (DESIGN §5; docs/transfer.md).
- `gen_memory`: GEN spatial memory against the summed GQN representation (docs/gen.md).
"""
