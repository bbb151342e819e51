"""The files that pass between stages: one module per kind, each with its layout.

Every module here defines its kind's ``KIND`` and ``VERSION``, a ``LAYOUT`` (the
datasets and attributes the file holds, as the README documents them), a writer and a
reader returning a typed object. Stages, the report and the compare view read and write
these files only through these modules. Nothing here imports TensorFlow.

============  ===============================  ==================
module        file (``paths.*``)                written by stage
============  ===============================  ==================
dataset       ``data/dataset.h5``              data
evaluation    ``outputs/evaluation.h5``        train
activations   ``outputs/activations.h5``       extract
attributions  ``outputs/attributions.h5``      attribute
maximization  ``outputs/maximization.h5``      maximize
concepts      ``outputs/concepts.h5``          concepts
============  ===============================  ==================
"""

from pipeline.artifacts.common import (
    hdf5_name,
    layer_path_of,
    open_artifact,
    provenance_attrs,
    read_json_attr,
    write_attrs,
)

__all__ = [
    "hdf5_name",
    "layer_path_of",
    "open_artifact",
    "provenance_attrs",
    "read_json_attr",
    "write_attrs",
]
