import pytest

from fusionseg.config import ConfigError, load_config


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_quickstart_configs_load():
    cfg = load_config("configs/quickstart.yaml")
    assert cfg.model.name == "sum_fusion"
    assert cfg.data.modalities == cfg.model.modalities
    rgb = load_config("configs/quickstart_rgb.yaml")
    assert rgb.model.modalities == ["rgb"]


def test_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(_write(tmp_path, "model: {modalities: [rgb]}\n"),
                      ["train.max_epochs=3", "data.crop_size=[64,64]", "train.lr=1e-4"])
    assert cfg.train.max_epochs == 3
    assert cfg.data.crop_size == (64, 64)
    assert cfg.train.lr == 1e-4


def test_unknown_key_names_file_and_key(tmp_path):
    p = _write(tmp_path, "train:\n  max_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown config key 'train\.max_epoch'"):
        load_config(p)
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(_write(tmp_path, "trian: {}\n"))


def test_wrong_type_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="train.max_epochs"):
        load_config(_write(tmp_path, "train: {max_epochs: many}\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must be the model's modalities"):
        load_config(_write(tmp_path, "model: {modalities: [rgb, depth]}\n"
                                     "data: {modalities: [rgb]}\n"))


def test_missing_modalities_must_be_some_of_the_models():
    import pytest

    from fusionseg.config import config_from_dict

    raw = {"model": {"modalities": ["irrg", "dsm"]}}
    cfg = config_from_dict({**raw, "data": {"missing_modalities": ["dsm"]}})
    assert cfg.data.missing_modalities == ["dsm"]
    for bad in (["thermal"], ["irrg", "dsm"]):
        with pytest.raises(ConfigError, match="missing_modalities"):
            config_from_dict({**raw, "data": {"missing_modalities": bad}})


def test_training_module_drops_the_missing_modalities():
    import torch

    from fusionseg.config import config_from_dict
    from fusionseg.engine.module import SegmentationModule

    cfg = config_from_dict({"model": {"modalities": ["rgb", "depth"]},
                            "data": {"missing_modalities": ["depth"]}, "train": {"loss": "ce"}})
    module = SegmentationModule(torch.nn.Identity(), cfg, ["a", "b"])
    batch = {"rgb": torch.ones(2, 3, 4, 4), "depth": torch.ones(2, 1, 4, 4),
             "present": torch.ones(2, 2, dtype=torch.bool), "label": torch.zeros(2, 4, 4)}
    out = module._prepare_batch(batch)
    assert "depth" not in out and out["present"].tolist() == [[True, False], [True, False]]


def test_a_key_set_inside_a_switch_makes_it_its_section():
    """configs/quickstart.yaml says ``robust: false``; ``--set train.robust.modality_dropout=0.5``
    (as docs/robustness.md writes it) turns robust training on with that dropout, and
    ``train.robust.enabled=false`` next to it keeps it off (it used to fail: 'robust' is not a
    section)."""
    from pathlib import Path

    from fusionseg.config import load_config

    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    assert load_config(quickstart).train.robust.enabled is False
    cfg = load_config(quickstart, ["train.robust.modality_dropout=0.5"])
    assert cfg.train.robust.enabled is True and cfg.train.robust.modality_dropout == 0.5
    off = load_config(quickstart, ["train.robust.modality_dropout=0.5",
                                   "train.robust.enabled=false"])
    assert off.train.robust.enabled is False and off.train.robust.modality_dropout == 0.5
    with pytest.raises(ConfigError, match="'lr' is not a section"):
        load_config(quickstart, ["train.lr.x=1"])
