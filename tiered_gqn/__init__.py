"""tiered_gqn: Generative Query Networks, tiered representations and spatial memory.

Importing the package registers every Keras-serializable class it defines,
so `keras.saving.load_model(path)` (safe mode included) loads a saved model
after `import tiered_gqn`.
"""

__version__ = "0.1.0"

from tiered_gqn import models  # noqa: E402,F401  (registers the model classes)
from tiered_gqn.training import optimizers  # noqa: E402,F401  (registers FusedAdam)
