"""Inference apart from training: load a trained model, predict on files, export to ONNX.

Modules (each imports only those above it, and none imports Lightning, ``fusionseg.engine``
or ``fusionseg.cli``)::

    health      sensor health checks of one modality's raw array
    specs       the modality specs files are read with (stored, overridden)
    onnx_model  OnnxModel: an exported file run by ONNX Runtime like a segmentor
    loading     checkpoint / ONNX file -> (model, meta, config), the file read once
    inputs      --input values -> a dataset of samples
    sensors     sensor health of a run: drop dead modalities, out/sensors.csv
    outputs     per-sample output files, the run's summary and failures
    prediction  predict(): the prediction run
    geotiff     predict_geotiff(): GeoTIFF rasters of any size -> georeferenced masks
    export      export_onnx(): checkpoint -> ONNX, checked with ONNX Runtime

The inference modes themselves (whole image, sliding window, multi-scale, flip) are shared
with evaluation: :mod:`fusionseg.models.inference_modes`.
"""

from .export import ExportReport, OnnxExportError, export_onnx
from .geotiff import GeoPredictionSummary, predict_geotiff
from .health import SensorHealth, check_modality, parse_health
from .inputs import FileInput, InputSource, open_inputs, parse_input
from .loading import LoadedModel, load_predictor
from .onnx_model import OnnxModel
from .outputs import PredictionIncomplete, PredictionSummary
from .prediction import inference_settings, predict
from .specs import parse_spec_overrides, training_specs

__all__ = [
    "ExportReport",
    "FileInput",
    "GeoPredictionSummary",
    "InputSource",
    "LoadedModel",
    "OnnxExportError",
    "OnnxModel",
    "PredictionIncomplete",
    "PredictionSummary",
    "SensorHealth",
    "check_modality",
    "export_onnx",
    "inference_settings",
    "load_predictor",
    "open_inputs",
    "parse_health",
    "parse_input",
    "parse_spec_overrides",
    "predict",
    "predict_geotiff",
    "training_specs",
]
