"""kerascope: see what happens inside a TensorFlow/Keras model.

The package is a library first: the tensor modules (``graph``, ``activations``,
``attribution``, ``maximization``) take arrays and models and return arrays, with no
file, config or plotting inside them, so they work from a notebook without DVC or Hydra.
The ``stages`` subpackage holds the thin DVC stage entry points.
"""

import os as _os

# Quiet TensorFlow's C++ start-up chatter before anything imports it; users who want it
# back can set TF_CPP_MIN_LOG_LEVEL themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"

from pipeline.errors import KerascopeError  # noqa: E402

__all__ = ["KerascopeError", "__version__"]
