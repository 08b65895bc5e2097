"""Experiments built on the library, each a command: `python -m trainer.experiments.<name>`.

- `transfer`: the tiered-representation transfer studies (DESIGN §5; docs/transfer.md).
"""
