"""Whole models as saved folders and on the Hugging Face hub (``fusionseg hub``, issue 25).

A tiny sum_fusion / MiT checkpoint is written the way training writes it (``model.``-prefixed
state dict, a training-only entry, ``fusionseg_*`` entries, Lightning's ModelCheckpoint state
with a best val mIoU), next to an EMM result JSON; a tiny DELIVER tree serves predict, eval and
a 1-step training run. Everything is offline: the hub is a hand-built cache
(``HF_HUB_CACHE`` + ``HF_HUB_OFFLINE=1``) or a mocked ``HfApi``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_MIT  # noqa: E402
from fixtures.deliver_tree import make_deliver_tree  # noqa: E402

import fusionseg  # noqa: E402
from fusionseg.cli import app  # noqa: E402
from fusionseg.config import config_from_dict, model_spec  # noqa: E402
from fusionseg.data.datasets.deliver import DELIVER_CLASSES, DELIVER_PALETTE, DELIVER_SPECS  # noqa: E402
from fusionseg.errors import CheckpointError, ConfigError  # noqa: E402
from fusionseg.hub import encoder_licence, push_to_hub, save_pretrained  # noqa: E402
from fusionseg.hub_files import HubRef, parse_hub_uri  # noqa: E402
from fusionseg.inference.loading import load_checkpoint_model  # noqa: E402
from fusionseg.models import create_model  # noqa: E402

runner = CliRunner()
MODALITIES = ("rgb", "depth")
SHA = "0123456789abcdef0123456789abcdef01234567"


def _cfg_dict(root: Path, **model) -> dict:
    return {
        "name": "tiny_hub", "seed": 0,
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": list(MODALITIES),
                  "decoder_dim": 16, "backbone_kwargs": TINY_MIT, **model},
        "data": {"dataset": "deliver", "root": str(root), "crop_size": [32, 32],
                 "batch_size": 2, "val_batch_size": 2, "num_workers": 0},
        "train": {"max_epochs": 1, "max_steps": 1, "lr": 1e-3, "progress": False,
                  "threads": 1},
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """``(tmp, root, ckpt, state)``: a DELIVER tree, a checkpoint as training writes it (plus
    an EMM JSON beside it) and the model's state dict it holds."""
    tmp = tmp_path_factory.mktemp("hub")
    root = tmp / "deliver"
    make_deliver_tree(root, conditions=("cloud",), per_split=2, size=32,
                      modalities=MODALITIES)
    cfg = config_from_dict(_cfg_dict(root))
    torch.manual_seed(7)  # not the runs' seed: a run initialised from it starts elsewhere
    model = create_model(model_spec(cfg, len(DELIVER_CLASSES), for_checkpoint=True))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    run = tmp / "run" / "checkpoints"
    run.mkdir(parents=True)
    ckpt = run / "best.ckpt"
    torch.save({
        "epoch": 2, "global_step": 30,
        "state_dict": {**{f"model.{k}": v for k, v in state.items()},
                       "criterion.weight": torch.ones(3)},  # training only: not saved
        "callbacks": {"ModelCheckpoint{'monitor': 'val/mIoU', 'mode': 'max'}": {
            "monitor": "val/mIoU", "best_model_score": torch.tensor(41.2345),
            "best_model_path": str(ckpt)}},
        "fusionseg_config": cfg.model_dump(mode="json"),
        "fusionseg_classes": DELIVER_CLASSES,
        "fusionseg_palette": DELIVER_PALETTE.tolist(),
        "fusionseg_conditions": ["cloud"],
        "fusionseg_precision": "32-true",
        "fusionseg_specs": {m: DELIVER_SPECS[m].model_dump(mode="json") for m in MODALITIES},
    }, ckpt)
    emm = {"protocol": "emm", "checkpoint": str(ckpt), "dataset": "deliver", "split": "val",
           "modalities": list(MODALITIES), "seed": 0,
           "subsets": [{"present": ["rgb", "depth"], "missing": [], "mIoU": 12.5, "OA": 50.0,
                        "mF1": 20.0},
                       {"present": ["rgb"], "missing": ["depth"], "mIoU": 7.25, "OA": 40.0,
                        "mF1": 10.0},
                       {"present": ["depth"], "missing": ["rgb"], "mIoU": 3.75, "OA": 30.0,
                        "mF1": 5.0}],
           "mean": 7.8333, "expectation": {"0.05": 12.0, "0.1": 11.5, "0.2": 10.5}}
    (run / "best_emm_val.json").write_text(json.dumps(emm))
    return tmp, root, ckpt, state


@pytest.fixture(scope="module")
def saved(setup):
    tmp, _, ckpt, _ = setup
    return save_pretrained(ckpt, tmp / "saved", repo_id="org/tiny")


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(2, 3, 32, 32, generator=g),
            "depth": torch.randn(2, 3, 32, 32, generator=g)}


def _hub_cache(tmp: Path, saved_dir: Path, repo: str = "org/tiny") -> Path:
    """``HF_HUB_CACHE`` holding ``repo`` at commit :data:`SHA` (``refs/main``), as
    ``huggingface_hub`` lays it out."""
    cache = tmp / "hf_cache"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / SHA
    snap.mkdir(parents=True, exist_ok=True)
    for f in saved_dir.iterdir():
        shutil.copy(f, snap / f.name)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(SHA)
    return cache


@pytest.fixture
def offline_hub(setup, saved, monkeypatch):
    tmp = setup[0]
    cache = _hub_cache(tmp, saved.directory)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


# --------------------------------------------------------------------------- save / load
def test_save_writes_the_weights_the_checkpoint_predicts_with(setup, saved):
    _, _, ckpt, state = setup
    d = saved.directory
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "config.json",
                                                   "model.safetensors"]
    weights = load_file(str(d / "model.safetensors"))
    assert sorted(weights) == sorted(state)  # no "criterion.weight", no "model." prefix
    assert all(torch.equal(weights[k], state[k]) for k in state)
    assert saved.tensors == len(state)
    config = json.loads((d / "config.json").read_text())
    assert config["library_name"] == "fusionseg" and config["format_version"] == 1
    assert config["fusionseg_version"] == fusionseg.__version__
    assert config["classes"] == DELIVER_CLASSES and config["num_classes"] == 25
    assert config["palette"][6] == [128, 64, 128]
    assert config["specs"]["depth"]["bit_depth"] == 16 and config["precision"] == "32-true"
    assert config["modalities"] == ["rgb", "depth"] and config["method"] == "sum_fusion"
    assert config["config"]["model"]["decoder_dim"] == 16
    assert config["metrics"]["best_val_miou"] == {"value": 41.2345, "checkpoint": "best.ckpt"}
    assert config["metrics"]["emm"]["mean"] == 7.8333
    assert config["source_checkpoint"] == "best.ckpt"


def test_from_pretrained_dir_gives_bit_identical_logits(setup, saved):
    ckpt = setup[2]
    reference = load_checkpoint_model(ckpt).model
    model = fusionseg.from_pretrained(saved.directory)
    assert not model.training
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(model(batch), reference(batch))
        one = {"rgb": batch["rgb"]}  # a missing modality too
        assert torch.equal(model(one), reference(one))


def test_predict_with_dir_writes_the_masks_of_the_checkpoint(setup, saved, tmp_path):
    _, root, ckpt, _ = setup
    outs = {}
    for name, source in (("ckpt", ckpt), ("dir", saved.directory)):
        out = tmp_path / name
        res = runner.invoke(app, ["predict", "--ckpt", str(source), "--input", str(root),
                                  "--split", "val", "--out", str(out)])
        assert res.exit_code == 0, res.output
        outs[name] = {p.name: p.read_bytes() for p in (out / "masks").glob("*.png")}
    assert len(outs["ckpt"]) == 2
    assert outs["dir"] == outs["ckpt"]


def test_eval_takes_a_dir_and_init_from_an_hf_uri(setup, saved, offline_hub, tmp_path):
    from fusionseg.engine.runner import evaluate, train

    tmp, root, ckpt, state = setup
    cfg = config_from_dict(_cfg_dict(root))
    by_ckpt = evaluate(cfg, ckpt, write_json=False)
    by_dir = evaluate(cfg, saved.directory)
    assert by_dir["overall"]["mIoU"] > 0
    # the same numbers (json: NaN, a class absent from the data, equals NaN there)
    assert json.dumps(by_dir["overall"]) == json.dumps(by_ckpt["overall"])
    assert by_dir["checkpoint"] == str(saved.directory)
    assert Path(by_dir["json"]) == saved.directory / "model_eval_val.json"
    (saved.directory / "model_eval_val.json").unlink()  # the folder as the other tests see it

    run_cfg = config_from_dict({**_cfg_dict(root), "train": {
        **_cfg_dict(root)["train"], "init_from": "hf://org/tiny", "lr": 0.0,
        "warmup_epochs": 0.0, "out_dir": str(tmp_path / "runs")}})
    out = train(run_cfg, run_dir=tmp_path / "run")
    trained = torch.load(out["last_ckpt"], weights_only=True)["state_dict"]
    # lr 0: the one step keeps the initial parameters, i.e. the saved ones (BatchNorm
    # running statistics do move in a training step)
    same = [torch.equal(trained[f"model.{k}"], v) for k, v in state.items()
            if v.is_floating_point() and "running_" not in k]
    assert len(same) > 50 and all(same)


# --------------------------------------------------------------------------- hf://
def test_parse_hub_uri_forms():
    assert parse_hub_uri("hf://org/name") == HubRef("org/name")
    assert parse_hub_uri("hf:/org/name@v1.0") == HubRef("org/name", "v1.0")  # pathlib.Path
    assert parse_hub_uri(Path("hf://org/name")) == HubRef("org/name")
    assert parse_hub_uri("runs/best.ckpt") is None
    assert HubRef("org/name", "dev").uri == "hf://org/name@dev"
    for bad in ("hf://", "hf://org/name@", "hf://a/b/c", "hf://bad name"):
        with pytest.raises(CheckpointError, match="expected hf://ORG/NAME"):
            parse_hub_uri(bad)


def test_hf_uri_resolves_from_the_offline_cache(setup, saved, offline_hub):
    reference = load_checkpoint_model(setup[2]).model
    batch = _batch(1)
    with torch.no_grad():
        expected = reference(batch)
        for source in ("hf://org/tiny", f"hf://org/tiny@{SHA}", str(Path("hf://org/tiny"))):
            loaded = load_checkpoint_model(source)
            assert loaded.meta["source"].startswith("hf://org/tiny")
            assert torch.equal(loaded.model(batch), expected)
        assert torch.equal(fusionseg.from_pretrained("org/tiny")(batch), expected)
        assert torch.equal(fusionseg.from_pretrained("org/tiny", revision=SHA)(batch), expected)


def test_unknown_repo_offline_is_one_clear_error(offline_hub):
    with pytest.raises(CheckpointError, match=r"^hf://org/missing: not in .*hf_cache and "
                                              r"HF_HUB_OFFLINE is set"):
        load_checkpoint_model("hf://org/missing")
    res = runner.invoke(app, ["predict", "--ckpt", "hf://org/missing", "--input", "x",
                              "--out", "y"])
    assert res.exit_code == 2
    assert "hf://org/missing: not in" in res.output and "Traceback" not in res.output


# --------------------------------------------------------------------------- push
class _FakeApi:
    """Records what ``push_to_hub`` asks of ``huggingface_hub.HfApi`` (no network)."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.calls.append(("upload_folder", repo_id, {**kw, "files": files}))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()


def test_push_uploads_the_saved_folder(setup, monkeypatch):
    import huggingface_hub

    _FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    url = push_to_hub(setup[2], "org/tiny", private=True, revision="v1")
    assert url == "https://huggingface.co/org/tiny/commit/1"
    (c1, repo1, kw1), (c2, _, kw2), (c3, repo3, kw3) = _FakeApi.calls
    assert (c1, repo1, kw1["private"], kw1["exist_ok"]) == ("create_repo", "org/tiny", True, True)
    assert (c2, kw2["branch"], kw2["exist_ok"]) == ("create_branch", "v1", True)
    assert (c3, repo3, kw3["revision"]) == ("upload_folder", "org/tiny", "v1")
    assert sorted(kw3["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert b"fusionseg predict --ckpt hf://org/tiny " in kw3["files"]["README.md"]
    with pytest.raises(ConfigError, match="ORG/NAME"):
        push_to_hub(setup[2], "no-org")


def test_hub_cli_save_and_push(setup, monkeypatch, tmp_path):
    import huggingface_hub

    res = runner.invoke(app, ["hub", "save", str(setup[2]), str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "model.safetensors, config.json, README.md" in res.output
    _FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    res = runner.invoke(app, ["hub", "push", str(setup[2]), "org/tiny"])
    assert res.exit_code == 0, res.output
    assert "pushed to hf://org/tiny" in res.output
    assert _FakeApi.calls[0][2]["private"] is False and _FakeApi.calls[-1][2]["revision"] is None


# --------------------------------------------------------------------------- model card
def test_model_card_contents(saved):
    card = (saved.directory / "README.md").read_text()
    front = card.split("---\n")[1]
    assert "library_name: fusionseg\n" in front
    assert "pipeline_tag: image-segmentation\n" in front
    assert "license: apache-2.0\n" in front  # random init: fusionseg's default
    for tag in ("sum_fusion", "mit_b0", "rgb", "depth"):
        assert f"- {tag}\n" in front
    assert "## Method" in card and "SegFormer, Xie et al. NeurIPS 2021" in card
    assert "| depth | 1 | - | 16 | 0.001 | 0.0 | m | mean [0.0], std [65.535] |" in card
    assert "| 6 | Road | `#804080` |" in card and "| 24 | Truck |" in card
    assert "Best validation mIoU of the training run: **41.23** (`best.ckpt`)" in card
    assert "| rgb | depth | 7.25 | 40.00 | 10.00 |" in card  # the EMM table
    assert "| 7.83 | 12.00 | 11.50 | 10.50 |" in card
    assert "no pretrained-weights licence applies" in card
    assert "fusionseg predict --ckpt hf://org/tiny --input DIR" in card
    assert 'fusionseg.from_pretrained("org/tiny")' in card


@pytest.mark.parametrize(("backbone", "hub_id", "words"), [
    ("mit_b2", "other", "NVIDIA Source Code License"),
    ("dinov2_vits14", "apache-2.0", "DINOv2"),
    ("sam2.1_hiera_t", "apache-2.0", "SAM 2"),
    ("sam_vit_b", "apache-2.0", "Segment Anything"),
    ("resnet50", "bsd-3-clause", "IMAGENET1K_V1"),
])
def test_encoder_licence_by_backbone(backbone, hub_id, words):
    enc = encoder_licence({"model": {"backbone": backbone, "pretrained": backbone}})
    assert enc.hub_id == hub_id and words in enc.text
    assert encoder_licence({"model": {"backbone": backbone, "pretrained": None}}) is None


def test_card_of_a_pretrained_mit_names_the_nvidia_licence(setup, tmp_path):
    tmp, root, ckpt, _ = setup
    contents = torch.load(ckpt, weights_only=True)
    contents["fusionseg_config"]["model"]["pretrained"] = "mit_b0"
    torch.save(contents, tmp_path / "p.ckpt")
    card = save_pretrained(tmp_path / "p.ckpt", tmp_path / "p").card
    assert "license: other\nlicense_name: nvidia-source-code-license-segformer\n" in card
    assert "non-commercial" in card


def test_licence_is_inherited_through_init_from(setup, saved, tmp_path):
    cfg = {"model": {"backbone": "mit_b0", "pretrained": None},
           "train": {"init_from": str(saved.directory)}}
    enc = encoder_licence(cfg)  # the saved model was randomly initialised
    assert enc.hub_id == "none" and "random initialisation" in enc.text
    cfg["train"]["init_from"] = str(tmp_path / "gone.ckpt")
    assert "could not be read" in encoder_licence(cfg).text


# --------------------------------------------------------------------------- bad input
def test_dir_without_files_is_one_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: not a saved fusionseg model: no "
                                              r"model.safetensors or config.json"):
        fusionseg.from_pretrained(tmp_path / "empty")
    res = runner.invoke(app, ["export", "--ckpt", str(tmp_path / "empty"), "--out",
                              str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "not a saved fusionseg model" in res.output


def test_config_of_another_library_is_refused(saved, tmp_path):
    d = tmp_path / "segformer"
    d.mkdir()
    save_file({"w": torch.zeros(1)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "segformer",
                                               "architectures": ["SegformerModel"]}))
    with pytest.raises(CheckpointError, match=r"segformer/config.json: not a fusionseg model "
                                              r"config .*transformers config \(model_type "
                                              r"'segformer'\)"):
        load_checkpoint_model(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_checkpoint_model(d)
    newer = json.loads((saved.directory / "config.json").read_text())
    newer["format_version"] = 99
    (d / "config.json").write_text(json.dumps(newer))
    with pytest.raises(CheckpointError, match="written by a newer fusionseg"):
        load_checkpoint_model(d)


def test_from_pretrained_bad_sources(saved):
    with pytest.raises(CheckpointError, match="no such folder, and not a Hugging Face"):
        fusionseg.from_pretrained("no such folder!")
    with pytest.raises(ConfigError, match="a local folder has no revision"):
        fusionseg.from_pretrained(saved.directory, revision="main")
    with pytest.raises(ConfigError, match="two revisions"):
        fusionseg.from_pretrained("hf://org/tiny@a", revision="b")
