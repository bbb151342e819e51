"""Thin DVC stage entry points: read a config section, call the library, write atomically."""
