"""Dataset options are declared once, as a typed model (``data/datasets/options.py``).

Every registered dataset: its ``Options`` is a :class:`DatasetOptions` whose fields each have a
description, the class does not re-declare the constructor, and the option names and defaults
are the ones ``data.options`` of the configs have always used. Option errors are one
``DataError`` line naming the dataset, the problem and the valid options with their types,
raised before the root is read; per-dataset normalisation (one name or several, tile ids as
strings) happens on the model. ``fusionseg info DATASET`` prints the options.
"""

from __future__ import annotations

import pickle

import pytest
from fixtures.deliver_tree import make_deliver_tree
from pydantic import ValidationError
from typer.testing import CliRunner

from fusionseg.cli import app
from fusionseg.data import DataError, create_dataset, get_dataset_class, list_datasets
from fusionseg.data.datasets import (
    DatasetOptions,
    DeliverOptions,
    ISPRSOptions,
    MultimodalDataset,
    MUSESOptions,
    dataset_options,
    describe_options,
)
from fusionseg.data.modalities import get_spec

COMMON = {"max_samples": None, "check_files": True, "specs": None}

#: dataset -> its own options and their defaults (the constructor keywords before issue 23)
OWN_DEFAULTS: dict[str, dict[str, object]] = {
    "deliver": {"conditions": None, "case": None},
    "fmb": {},
    "folder": {},
    "mcubes": {"crop_left": 192, "nir_mask": False},
    "mfnet": {"layout": "auto"},
    "muses": {"conditions": None, "time_of_day": None, "projection_folder": "projected_to_rgb",
              "projected_format": "auto"},
    "nyudv2": {"label_format": "1-40"},
    "vaihingen": {"tiles": None, "label_variant": "auto", "tile_size": None, "stride": None,
                  "tile_splits": None, "dsm_size_tolerance": 16, "dsm_nodata_below": -1000.0,
                  "off_palette_class": None},
}
OWN_DEFAULTS["potsdam"] = OWN_DEFAULTS["vaihingen"]


@pytest.mark.parametrize("name", list_datasets())
def test_every_dataset_declares_its_options_once(name):
    cls = get_dataset_class(name)
    assert name in OWN_DEFAULTS, f"add the options of dataset {name!r} to OWN_DEFAULTS"
    assert issubclass(cls.Options, DatasetOptions)
    below_base = cls.__mro__[:cls.__mro__.index(MultimodalDataset)]
    assert not [c.__name__ for c in below_base if "__init__" in vars(c)]
    defaults = {k: f.default for k, f in cls.Options.model_fields.items()}
    assert defaults == {**OWN_DEFAULTS[name], **COMMON}
    assert dataset_options(cls) == [*OWN_DEFAULTS[name], *COMMON]  # its own first
    assert all(i.doc and "\n" not in i.doc for i in describe_options(cls.Options))


def test_describe_shows_the_declared_types():
    rows = {i.name: i for i in describe_options(ISPRSOptions)}
    assert rows["label_variant"].type == "Literal['auto', 'full', 'noBoundary']"
    assert rows["tiles"].type == "list[str] | None" and rows["tiles"].default == "None"
    assert rows["dsm_size_tolerance"].type == "int" and rows["dsm_size_tolerance"].default == "16"
    assert rows["check_files"].type == "bool" and rows["check_files"].default == "True"


def test_normalised_on_the_model():
    assert DeliverOptions(conditions="fog").conditions == ["fog"]
    assert DeliverOptions(conditions=("fog", "night")).conditions == ["fog", "night"]
    assert MUSESOptions(conditions="rain").conditions == ["rain"]
    isprs = ISPRSOptions(tiles=[1, "3"], tile_splits="train", tile_size=16)
    assert isprs.tiles == ["1", "3"] and isprs.tile_splits == ["train"]
    assert ISPRSOptions(tiles=5).tiles == ["5"]
    spec, overrides = get_spec("rgb"), {"bit_depth": 16}
    got = DatasetOptions(specs={"rgb": spec, "depth": overrides}).specs
    assert got["rgb"] is spec and got["depth"] == overrides and type(got["depth"]) is dict


def test_unknown_option_is_one_line_naming_the_valid_ones():
    with pytest.raises(DataError) as ei:
        create_dataset("deliver", "/nowhere", "train", colour=True)
    msg = str(ei.value)
    assert "\n" not in msg and ei.value.path is None  # the options, before the root
    assert msg.startswith("dataset 'deliver': unknown option 'colour'. Valid options: ")
    assert msg.endswith("conditions: list[str] | None, case: str | None, max_samples: int | None, "
                        "check_files: bool, specs: dict[str, ModalitySpec | dict] | None")


@pytest.mark.parametrize("name, options, expect", [
    ("deliver", {"max_samples": "many"}, "max_samples: Input should be a valid integer"),
    ("deliver", {"max_samples": -1}, "max_samples must be >= 0, got -1"),
    ("deliver", {"check_files": "maybe"}, "check_files: Input should be a valid boolean"),
    ("deliver", {"specs": {"rgb": 3}}, "specs of ['rgb'] must be a ModalitySpec or a mapping"),
    ("deliver", {"case": "snow"}, "unknown DELIVER case 'snow'"),
    ("mcubes", {"crop_left": -1}, "crop_left must be >= 0, got -1"),
    ("mfnet", {"layout": "rgb"}, "layout must be one of 'auto', 'rgba' or 'split', got 'rgb'"),
    ("muses", {"conditions": ["sunny"]}, "conditions: unknown MUSES weather(s) ['sunny']"),
    ("muses", {"time_of_day": "dusk"}, "unknown MUSES time of day 'dusk'"),
    ("muses", {"projected_format": ".jpg"},
     "projected_format must be one of 'auto', '.npz', '.npy' or '.png', got '.jpg'"),
    ("nyudv2", {"label_format": "0-40"}, "label_format must be one of '1-40' or '0-39', got '0-40'"),
    ("vaihingen", {"label_variant": "eroded"},
     "label_variant must be one of 'auto', 'full' or 'noBoundary', got 'eroded'"),
    ("vaihingen", {"tile_size": 0}, "tile_size must be >= 1, got 0"),
    ("potsdam", {"stride": 8}, "stride needs tile_size"),
    ("potsdam", {"tile_size": 8, "stride": 0}, "stride must be >= 1, got 0"),
    ("potsdam", {"off_palette_class": 6}, "off_palette_class must be < 6, got 6"),
    ("potsdam", {"off_palette_class": True}, "off_palette_class: Input should be a valid integer"),
    ("potsdam", {"off_palette_class": "0"}, "off_palette_class: Input should be a valid integer"),
])
def test_wrong_values_name_the_dataset_and_the_option(name, options, expect):
    with pytest.raises(DataError) as ei:
        create_dataset(name, "/nowhere", "train", **options)
    msg = str(ei.value)
    assert msg.startswith(f"dataset '{name}': ") and expect in msg and "Valid options: " in msg


def test_dataset_reads_its_options(tmp_path):
    make_deliver_tree(tmp_path, per_split=2)
    ds = create_dataset("deliver", tmp_path, "train", "rgb", conditions="cloud", max_samples=1,
                        check_files=False)
    assert isinstance(ds.options, DeliverOptions) and ds.options.conditions == ["cloud"]
    assert len(ds) == 1 and ds.conditions == ["cloud"] and ds.modalities == ["rgb"]
    assert pickle.loads(pickle.dumps(ds)).options == ds.options  # DataLoader workers
    with pytest.raises(ValidationError, match="frozen"):
        ds.options.case = "fog"


def test_info_prints_a_datasets_options():
    res = CliRunner().invoke(app, ["info", "mcubes"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "mcubes options (data.options.<option> in a config)" in res.output
    lines = {ln.split("│")[1].strip(): ln for ln in res.output.splitlines() if ln.count("│") > 2}
    assert {"crop_left", "nir_mask", "max_samples", "check_files", "specs"} <= set(lines)
    assert "192" in lines["crop_left"] and "int" in lines["crop_left"]
