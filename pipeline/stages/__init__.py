"""Thin DVC stage entry points: read a config section, call the library, write atomically.

Each stage module has ``configure(params)``, which checks every setting and path it
uses without importing TensorFlow (so a typo is reported at once), and ``run(job)``,
which imports the tensor libraries and does the work.
"""
