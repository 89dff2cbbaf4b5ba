"""Adding a backbone is one file plus its test (issue 23).

``tests/fixtures/toy_backbone.py`` declares a backbone, the conversion of its official format,
its family (how ``weights convert`` recognises its files) and its pretrained file; nothing
under ``src/`` names it. Here it is loaded through ``create_model`` (as a method's
``backbone``), through the pretrained-weight catalogue (a catalogue name as ``pretrained``) and
through ``fusionseg weights convert``. The known answer each time: our weights are the official
file's tensors under the renamed keys, written out below key by key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures import toy_backbone
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from fusionseg.cli import app
from fusionseg.models import catalogue, create_backbone, create_model
from fusionseg.models.catalogue import WEIGHTS_ENV, WeightsNotAvailableError, register_pretrained

ROOT = Path(__file__).resolve().parents[2]
TINY = [4, 8, 8, 16]


def write_official(path: Path, widths=TINY, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """An official ``toy_convnet`` release at ``path`` (DDP prefix, classifier, every tensor
    distinct); returns its tensors without the prefix."""
    chans, sd = [3, *widths], {}
    for i in range(4):
        k = 4 if i == 0 else 2
        n = chans[i + 1] * chans[i] * k * k
        sd[f"features.{i}.conv.weight"] = (
            torch.arange(n, dtype=torch.float32).reshape(chans[i + 1], chans[i], k, k) / n + i)
        sd[f"features.{i}.conv.bias"] = -torch.arange(chans[i + 1], dtype=torch.float32) - 10 * i
    sd["classifier.weight"] = torch.ones(10, widths[-1])
    sd["classifier.bias"] = torch.zeros(10)
    torch.save({"state_dict": {prefix + k: v for k, v in sd.items()}}, path)
    return sd


def renamed(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official tensors under our keys (the classifier is not part of the backbone)."""
    return {
        "stages.0.weight": official["features.0.conv.weight"],
        "stages.0.bias": official["features.0.conv.bias"],
        "stages.1.weight": official["features.1.conv.weight"],
        "stages.1.bias": official["features.1.conv.bias"],
        "stages.2.weight": official["features.2.conv.weight"],
        "stages.2.bias": official["features.2.conv.bias"],
        "stages.3.weight": official["features.3.conv.weight"],
        "stages.3.bias": official["features.3.conv.bias"],
    }


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


@pytest.fixture
def toy_catalogue(tmp_path, monkeypatch):
    """The weights directory (``$FUSIONSEG_WEIGHTS``) and the toy's catalogue entry,
    registered as its backbone file would, for this test only."""
    wdir = tmp_path / "weights"
    monkeypatch.setenv(WEIGHTS_ENV, str(wdir))
    monkeypatch.setattr(catalogue, "CATALOGUE", dict(catalogue.CATALOGUE))
    register_pretrained(*toy_backbone.PRETRAINED)
    return wdir


def test_no_package_file_names_the_toy_backbone():
    hits = [p for p in (ROOT / "src").rglob("*.py") if "toy_convnet" in p.read_text()]
    assert hits == []


def test_filter_converts_the_official_keys_and_keeps_ours(tmp_path):
    official = write_official(tmp_path / "official.pth")
    assert_same(toy_backbone.checkpoint_filter_fn({f"module.{k}": v for k, v in official.items()}),
                renamed(official))
    bb = create_backbone("toy_convnet", widths=TINY)
    own = bb.state_dict()
    again = type(bb).checkpoint_filter_fn(own, bb)
    assert list(again) == list(own) and all(again[k] is own[k] for k in own)


def test_create_model_loads_the_official_file(tmp_path):
    official = write_official(tmp_path / "toy_convnet-e5a1.pth")
    model = create_model({"name": "sum_fusion", "backbone": "toy_convnet",
                          "pretrained": str(tmp_path / "toy_convnet-e5a1.pth"),
                          "backbone_kwargs": {"widths": TINY}, "num_classes": 3,
                          "modalities": ["rgb", "depth"]}).eval()
    assert_same(model.backbone.state_dict(), renamed(official))
    assert model.decode_head.embed_dim == 16  # the decoder_dim declared at registration
    batch = {"rgb": torch.randn(2, 3, 64, 96), "depth": torch.randn(2, 3, 64, 96)}
    with torch.no_grad():
        assert model(batch).shape == (2, 3, 64, 96)


def test_catalogue_name_resolves_to_the_file_in_the_weights_dir(tmp_path, toy_catalogue):
    cfg = {"name": "sum_fusion", "backbone": "toy_convnet", "pretrained": "toy_convnet",
           "backbone_kwargs": {"widths": TINY}, "num_classes": 3, "modalities": ["rgb"]}
    with pytest.raises(WeightsNotAvailableError) as ei:
        create_model(cfg)
    where = toy_catalogue / "toy_convnet-e5a1.pth"
    assert str(ei.value).endswith("run `fusionseg weights fetch toy_convnet` or put "
                                  f"toy_convnet-e5a1.pth at {where}")
    toy_catalogue.mkdir()
    official = write_official(toy_catalogue / "toy_convnet-e5a1.pth")
    assert_same(create_model(cfg).backbone.state_dict(), renamed(official))
    res = CliRunner().invoke(app, ["weights", "list"])
    assert res.exit_code == 0 and "toy_convnet" in res.output


def test_weights_convert_recognises_the_official_file(tmp_path):
    official = write_official(tmp_path / "release.pth")
    out = tmp_path / "ours.safetensors"
    res = CliRunner().invoke(app, ["weights", "convert", str(tmp_path / "release.pth"), str(out)])
    assert res.exit_code == 0, res.output
    assert ("detected toy_convnet with widths=[4, 8, 8, 16] (official keys, from the state dict)"
            in res.output)
    assert_same(load_file(out), renamed(official))
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["fusionseg_backbone"] == "toy_convnet"
    assert json.loads(meta["fusionseg_backbone_overrides"]) == {"widths": TINY}
    # the published widths, named on the command line
    full = write_official(tmp_path / "full.pth", widths=[16, 32, 64, 128], prefix="")
    res = CliRunner().invoke(app, ["weights", "convert", str(tmp_path / "full.pth"),
                                   str(tmp_path / "full.safetensors"), "--backbone", "toy_convnet"])
    assert res.exit_code == 0, res.output
    assert_same(load_file(tmp_path / "full.safetensors"), renamed(full))
