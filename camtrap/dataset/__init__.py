"""Datasets: the data contract (camtrap.dataset.contract: one validated table, whatever the
format) and its readers. Today's reader is the Conser-vision layout (camtrap.dataset.conservision,
two CSVs read by camtrap.dataset.csvtable); camtrap.dataset.fetch makes a dataset at an s3:// URI
local first."""

from camtrap.dataset.conservision import (
    load_dataset,
    load_features,
    validate_dataset,
    validate_features,
)
from camtrap.dataset.contract import (
    RESERVED_COLUMNS,
    FeatureData,
    ImageCheck,
    ImageLimits,
    LabelledData,
    decode_check,
)
from camtrap.dataset.fetch import fetch_dataset, image_names

__all__ = [
    "RESERVED_COLUMNS", "FeatureData", "ImageCheck", "ImageLimits", "LabelledData",
    "decode_check", "fetch_dataset", "image_names", "load_dataset", "load_features",
    "validate_dataset", "validate_features",
]  # fmt: skip
