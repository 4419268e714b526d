"""Input pipeline: TFDS datasets by name, the embedded digits datasets, preprocessing.

``from vggjax.data import load, get_datasets, get_info, DatasetInfo, Augment``. Importing
this package imports TensorFlow (hidden from GPUs) and registers the embedded TFDS
builders ``vggjax_digits``, ``vggjax_digits2`` and ``vggjax_digits_multilabel``.
"""

from vggjax.data.pipeline import (
    EMBEDDED_DATASETS,
    Augment,
    DatasetInfo,
    build_dataset,
    get_datasets,
    get_info,
    load,
)

__all__ = [
    "EMBEDDED_DATASETS",
    "Augment",
    "DatasetInfo",
    "build_dataset",
    "get_datasets",
    "get_info",
    "load",
]
