"""One contract for every registered dataset (``fusionseg.data.list_datasets()``), each read
from its generated fixture tree (``tests/fixtures/*_tree.py``).

Every sample of the split: the Sample convention of :mod:`fusionseg.data.sample` (each selected
modality ``float32 [C, H, W]`` with ``C`` the spec's ``out_channels``, ``"label"`` ``int64
[H, W]`` of the same size with values in ``[0, num_classes)`` or ``ignore_index``, ``"meta"``
with the id and file paths, no other keys; a ``"present"`` flag vector, if a dataset adds one,
agrees with the modality keys); the class names and palette agree; ``plot()`` draws one panel
per modality plus the label. A dataset registered without an entry in :data:`TREES` fails
here, asking for one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch
from fixtures.deliver_tree import ALL_MODALITIES, make_deliver_tree
from fixtures.fmb_tree import make_fmb_tree
from fixtures.folder_tree import make_folder_tree
from fixtures.isprs_tree import make_potsdam_tree, make_vaihingen_tree
from fixtures.mcubes_tree import make_mcubes_tree
from fixtures.mfnet_tree import make_mfnet_tree
from fixtures.muses_tree import make_muses_tree
from fixtures.nyudv2_tree import make_nyudv2_tree

from fusionseg.data import create_dataset, list_datasets
from fusionseg.data.sample import LABEL_KEY, META_KEY, PRESENT_KEY

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass(frozen=True)
class Tree:
    """How to build dataset ``name`` for the contract: ``write(root)`` writes the fixture tree,
    then ``create_dataset(name, root, split, modalities, **options)``."""

    write: Callable[[Path], Any]
    split: str
    modalities: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


#: dataset -> its fixture tree, split and (all offered) modalities
TREES: dict[str, Tree] = {
    "deliver": Tree(lambda r: make_deliver_tree(r, per_split=1), "train", ALL_MODALITIES),
    "fmb": Tree(lambda r: make_fmb_tree(r, splits={"train": 2}), "train", ("rgb", "thermal")),
    "folder": Tree(lambda r: make_folder_tree(r, stems=("a", "b")), "train", ("rgb", "thermal")),
    "mcubes": Tree(lambda r: make_mcubes_tree(r, splits={"train": 2}), "train",
                   ("rgb", "aolp", "dolp", "nir")),
    "mfnet": Tree(lambda r: make_mfnet_tree(r, splits={"train": 2}), "train", ("rgb", "thermal")),
    "muses": Tree(lambda r: make_muses_tree(r, splits={"train": 1}), "train",
                  ("rgb", "event", "lidar", "radar")),
    "nyudv2": Tree(lambda r: make_nyudv2_tree(r, splits={"train": 2}), "train",
                   ("rgb", "hha", "depth")),
    "potsdam": Tree(lambda r: make_potsdam_tree(r, tiles=["2_10"], height=24, width=24), "train",
                    ("rgb", "irrg", "rgbir", "nir", "dsm"), {"tiles": ["2_10"]}),
    "vaihingen": Tree(lambda r: make_vaihingen_tree(r, tiles=["1"], height=24, width=24),
                      "train", ("irrg", "dsm"), {"tiles": ["1"]}),
}


def tree_for(name: str) -> Tree:
    """The fixture entry of dataset ``name``; fails the test when there is none."""
    if name not in TREES:
        pytest.fail(f"dataset '{name}' is registered but has no fixture tree: add one (a "
                    f"tests/fixtures/{name}_tree.py writer and an entry in TREES of "
                    "tests/data/test_dataset_contract.py)", pytrace=False)
    return TREES[name]


@pytest.fixture(params=list_datasets())
def dataset(request, tmp_path):
    name = request.param
    tree = tree_for(name)
    root = tmp_path / name
    tree.write(root)
    return create_dataset(name, root, tree.split, list(tree.modalities), **tree.options)


def test_samples_follow_the_convention(dataset):
    ds = dataset
    assert len(ds) > 0
    k = ds.num_classes
    assert k == len(ds.classes) > 0 and ds.palette.shape == (k, 3)
    for i in range(len(ds)):
        s = ds[i]
        mods = [m for m in ds.modalities if m in s]
        assert set(s) <= {*ds.modalities, LABEL_KEY, META_KEY, PRESENT_KEY}, sorted(s)
        assert mods, f"sample {i} has no modality"
        label = s[LABEL_KEY]
        assert label.dtype == torch.int64 and label.ndim == 2
        for m in mods:
            x = s[m]
            assert x.dtype == torch.float32, (m, x.dtype)
            assert tuple(x.shape) == (ds.specs[m].out_channels, *label.shape), (m, x.shape)
            assert torch.isfinite(x).all(), m
        valid = label != ds.ignore_index
        assert valid.any(), f"sample {i}: every pixel is ignore"
        assert 0 <= int(label[valid].min()) and int(label[valid].max()) < k
        if PRESENT_KEY in s:
            present = s[PRESENT_KEY]
            assert present.dtype == torch.bool
            assert present.tolist() == [m in s for m in ds.modalities]
        meta = s[META_KEY]
        assert isinstance(meta["id"], str) and meta["id"]
        assert set(meta["paths"]) >= {*mods, LABEL_KEY}


def test_plot_draws_every_modality_and_the_label(dataset):
    ds = dataset
    fig = ds.plot(0)
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == [*ds.modalities, "label"]
        assert all(len(ax.get_images()) == 1 for ax in fig.axes)
        assert fig._suptitle.get_text() == ds[0][META_KEY]["id"]
    finally:
        plt.close(fig)
    sample = ds[0]
    fig = ds.plot(sample, prediction=torch.zeros_like(sample[LABEL_KEY]), show_titles=False)
    try:
        assert len(fig.axes) == len(ds.modalities) + 2
        assert all(ax.get_title() == "" for ax in fig.axes)
    finally:
        plt.close(fig)
    missing = ds.modalities[-1]  # a sample without it: an empty panel saying so
    fig = ds.plot({k: v for k, v in sample.items() if k != missing})
    try:
        ax = fig.axes[len(ds.modalities) - 1]
        assert ax.get_title() == f"{missing} (absent)" and not ax.get_images()
    finally:
        plt.close(fig)


def test_a_dataset_without_a_fixture_fails_asking_for_one():
    with pytest.raises(pytest.fail.Exception, match="'newset'.*add one.*newset_tree.py"):
        tree_for("newset")


def test_every_fixture_names_a_registered_dataset():
    assert set(TREES) <= set(list_datasets())
