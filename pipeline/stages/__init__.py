"""Thin DVC stage entry points: read a config section, call the library, write atomically."""

from pipeline.config import quiet_tensorflow_import

# Stage modules import TensorFlow at module level; silence its start-up lines first so
# a user's one-line error is not buried under them.
quiet_tensorflow_import()
