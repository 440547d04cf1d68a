"""Datasets: the data contract (camtrap.dataset.contract: one validated table, whatever the
format) and its readers: the Conser-vision layout (conservision, two CSVs read by csvtable), COCO
Camera Traps (coco), Camtrap DP (camtrapdp, checked against the TDWG schemas by dpschema) and
class folders (folders), each building the table through records. formats picks the reader
(data.format or auto); fetch makes a dataset at an s3:// URI local first."""

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
from camtrap.dataset.fetch import fetch_data, fetch_dataset, image_names
from camtrap.dataset.formats import load_data, resolve_format, validate_data

__all__ = [
    "RESERVED_COLUMNS", "FeatureData", "ImageCheck", "ImageLimits", "LabelledData",
    "decode_check", "fetch_data", "fetch_dataset", "image_names", "load_data", "load_dataset",
    "load_features", "resolve_format", "validate_data", "validate_dataset", "validate_features",
]  # fmt: skip
