"""tiered_gqn: Generative Query Networks, tiered representations and spatial memory."""

__version__ = "0.1.0"
