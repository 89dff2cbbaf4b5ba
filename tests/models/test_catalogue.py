"""The pretrained-weight catalogue, ``fusionseg weights list / fetch`` and ``model.pretrained:
NAME`` (issue 13, item 1). Nothing here touches the network: the hub client and ``urlopen`` are
replaced by fakes."""

from __future__ import annotations

import hashlib
import io
import re
import urllib.error

import pytest
import torch
from typer.testing import CliRunner

from fusionseg import cli
from fusionseg.cli import app
from fusionseg.errors import CheckpointError
from fusionseg.models import catalogue
from fusionseg.models.backbones import BACKBONES, create_backbone
from fusionseg.models.catalogue import (
    CATALOGUE,
    ChecksumError,
    PretrainedWeights,
    WeightsNotAvailableError,
    fetch,
    find_pretrained,
    local_path,
    resolve_pretrained,
)
from fusionseg.models.registry import MODELS
from fusionseg.models.weights import load_state_dict_file


@pytest.fixture
def wdir(tmp_path, monkeypatch):
    """An empty weights directory as $FUSIONSEG_WEIGHTS; every download path is a fake that
    fails, so a test that forgets to replace one cannot reach the network."""
    d = tmp_path / "weights"
    monkeypatch.setenv("FUSIONSEG_WEIGHTS", str(d))

    def no_hub(repo_id, filename):
        raise OSError("offline (test)")

    def no_url(url, timeout):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(catalogue, "_hub_download", no_hub)
    monkeypatch.setattr(catalogue, "_open_url", no_url)
    return d


class _Response(io.BytesIO):
    def __init__(self, data: bytes, length: int | None = None) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}


def _serve(monkeypatch, data: bytes, seen: list | None = None, length: int | None = None):
    def fake(url, timeout):
        if seen is not None:
            seen.append(url)
        return _Response(data, length)

    monkeypatch.setattr(catalogue, "_open_url", fake)


def _entry(monkeypatch, **kw) -> PretrainedWeights:
    """A catalogue entry added for the test (a small file behind a fake URL)."""
    base = dict(name="test_resnet", backbone="resnet50", methods=("asymfusion",),
                source="test", filename="test_resnet-abc.pth",
                url="https://example.invalid/test_resnet-abc.pth")
    e = PretrainedWeights(**{**base, **kw})
    monkeypatch.setitem(CATALOGUE, e.name, e)
    return e


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


# --------------------------------------------------------------------------- the catalogue
def test_entries_are_consistent_with_the_registries():
    assert len(CATALOGUE) == 6 + 8 + 4 + 3 + 3
    for e in CATALOGUE.values():
        assert e.backbone in BACKBONES, e.name
        assert e.methods and all(m in MODELS for m in e.methods), e.name
        assert e.url is None or e.url.startswith("https://") and e.url.endswith(e.filename)
        assert e.hf_format in ("official", "transformers")
        assert (e.hf_repo is None) == (e.hf_filename is None)
        for digest in (e.sha256, e.md5):
            assert digest is None or re.fullmatch(r"[0-9a-f]{6,64}", digest)
    assert len({e.filename for e in CATALOGUE.values()}) == len(CATALOGUE)
    # every backbone the catalogue names resolves to exactly its entry
    for e in CATALOGUE.values():
        assert find_pretrained(e.name) is e and find_pretrained(e.filename) is e
        assert find_pretrained(e.backbone) is e
    assert find_pretrained("sam2.1_hiera_b+").name == "sam2.1_hiera_base_plus"
    assert find_pretrained("nope") is None


def test_published_checksums_match_the_official_file_names():
    """The SAM v1 names end with the MD5 prefix, torchvision's with the SHA-256 prefix."""
    for v in "blh":
        e = CATALOGUE[f"sam_vit_{v}"]
        assert len(e.md5) == 32 and e.sha256 is None
        assert e.filename == f"sam_vit_{v}_{e.md5[:6]}.pth"
    for d in ("50", "101", "152"):
        e = CATALOGUE[f"resnet{d}"]
        assert e.filename == f"resnet{d}-{e.sha256}.pth" and len(e.sha256) == 8
    assert [e.name for e in CATALOGUE.values() if e.sha256 or e.md5] == [
        "sam_vit_b", "sam_vit_l", "sam_vit_h", "resnet50", "resnet101", "resnet152"]
    assert CATALOGUE["sam2.1_hiera_large"].url == (
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt")
    assert CATALOGUE["sam2.1_hiera_large"].hf_filename == "sam2.1_hiera_large.pt"


# --------------------------------------------------------------------------- resolution
def test_resolution_errors_are_one_line_and_name_the_options(wdir, tmp_path):
    f = tmp_path / "mine.pth"
    f.write_bytes(b"x")
    assert resolve_pretrained(f) == f
    with pytest.raises(WeightsNotAvailableError) as ei:
        resolve_pretrained("mit_b2")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "run `fusionseg weights fetch mit_b2`" in msg and f"at {wdir / 'mit_b2.pth'}" in msg
    assert "https://huggingface.co/nvidia/mit-b2/resolve/main/pytorch_model.bin" in msg
    with pytest.raises(CheckpointError, match=r"not a catalogue name; give a local path or "
                                                r"one of mit_b0, .*resnet152") as ei:
        resolve_pretrained("mit_b9")
    assert not isinstance(ei.value, WeightsNotAvailableError)
    # a missing path whose file is a catalogue file names the entry
    with pytest.raises(CheckpointError, match="catalogue file of 'sam2.1_hiera_base_plus'"):
        resolve_pretrained("checkpoints/pretrained/sam2.1_hiera_base_plus.pt")
    # create_backbone resolves before building, with the same errors
    with pytest.raises(WeightsNotAvailableError, match="fusionseg weights fetch resnet50"):
        create_backbone("resnet50", pretrained="resnet50")
    with pytest.raises(CheckpointError, match="no such file, and not a catalogue name"):
        create_backbone("resnet50", pretrained="resnet_999")


def test_missing_pretrained_in_the_cli_is_one_line_exit_2(wdir, tmp_path):
    """``model.pretrained: NAME`` not fetched: the command fails with the fetch hint."""
    from fusionseg.models import create_model

    with pytest.raises(WeightsNotAvailableError, match="fusionseg weights fetch mit_b0"):
        create_model({"name": "segformer", "backbone": "mit_b0", "pretrained": "mit_b0",
                      "num_classes": 2})
    res = CliRunner().invoke(app, ["weights", "fetch", "mit_b0", "--dir", str(tmp_path / "d")])
    assert res.exit_code == 2
    line = _one_line(res.output)
    assert line.startswith("error: cannot download mit_b0 (hub nvidia/mit-b0: offline (test))")
    assert line.endswith("download https://huggingface.co/nvidia/mit-b0/resolve/main/"
                         f"pytorch_model.bin and put it at {tmp_path / 'd' / 'mit_b0.pth'}")


# --------------------------------------------------------------------------- fetch
def test_fetch_from_the_official_url_verifies_and_stores(wdir, monkeypatch):
    data = b"official bytes " * 1000
    e = _entry(monkeypatch, sha256=hashlib.sha256(data).hexdigest()[:8],
               md5=hashlib.md5(data).hexdigest())
    seen: list[str] = []
    _serve(monkeypatch, data, seen)
    progress: list[tuple[int, int | None]] = []
    path = fetch(e.name, progress=lambda d, t: progress.append((d, t)))
    assert path == wdir / e.filename and path.read_bytes() == data
    assert seen == [e.url] and progress[-1] == (len(data), len(data))
    assert sorted(p.name for p in wdir.iterdir()) == [e.filename]  # no temporary file left
    assert resolve_pretrained(e.name) == path
    # already there: no second download
    fetch(e.name)
    assert seen == [e.url]


@pytest.mark.parametrize("kind", ["sha256", "md5"])
def test_fetch_with_a_wrong_checksum_leaves_no_file(wdir, monkeypatch, kind):
    data = b"tampered"
    good = getattr(hashlib, kind)(b"the published file").hexdigest()
    e = _entry(monkeypatch, **{kind: good})
    _serve(monkeypatch, data)
    with pytest.raises(ChecksumError, match=f"{kind} {getattr(hashlib, kind)(data).hexdigest()} "
                                            f"does not match the published {good}"):
        fetch(e.name)
    assert list(wdir.iterdir()) == []
    res = CliRunner().invoke(app, ["weights", "fetch", e.name])
    assert res.exit_code == 2 and "does not match the published" in _one_line(res.output)
    assert list(wdir.iterdir()) == []


def test_truncated_download_leaves_no_file_and_reports_the_url(wdir, monkeypatch):
    e = _entry(monkeypatch)
    _serve(monkeypatch, b"12345", length=10)
    with pytest.raises(WeightsNotAvailableError) as ei:
        fetch(e.name)
    msg = str(ei.value)
    assert "ended after 5 of 10 bytes" in msg
    assert msg.endswith(f"download {e.url} and put it at {wdir / e.filename}")
    assert list(wdir.iterdir()) == []


def test_offline_error_names_url_and_path(wdir, tmp_path):
    e = CATALOGUE["sam_vit_b"]  # official URL only
    with pytest.raises(WeightsNotAvailableError) as ei:
        fetch("sam_vit_b", tmp_path / "w")
    err = ei.value
    assert (err.url, err.path) == (e.url, tmp_path / "w" / e.filename)
    assert str(err) == (f"cannot download sam_vit_b ({e.url}: <urlopen error offline (test)>): "
                        f"download {e.url} and put it at {tmp_path / 'w' / e.filename}")
    # hub first, then the official URL; both reasons in the one line
    with pytest.raises(WeightsNotAvailableError, match=r"hub facebook/sam2.1-hiera-tiny: "
                       r"offline \(test\); https://dl\.fbaipublicfiles\.com/"):
        fetch("sam2.1_hiera_t", tmp_path / "w")


def test_hub_file_in_the_official_format_is_placed_as_is(wdir, monkeypatch, tmp_path):
    data = b"an official checkpoint"
    e = _entry(monkeypatch, name="test_sam2", backbone="sam2.1_hiera_t", methods=("mle_sam",),
               filename="test_sam2.pt", url=None, hf_repo="org/repo", hf_filename="test_sam2.pt")
    cached = tmp_path / "hub-cache" / "test_sam2.pt"
    cached.parent.mkdir()
    cached.write_bytes(data)
    asked = []
    monkeypatch.setattr(catalogue, "_hub_download",
                        lambda repo, fn: asked.append((repo, fn)) or cached)
    path = fetch(e.name)
    assert asked == [("org/repo", "test_sam2.pt")]
    assert path.read_bytes() == data and cached.read_bytes() == data


def _hf_mit_b0_file(tmp_path):
    """A full-size (MiT-B0) random ``nvidia/mit-b0``-style file: transformers'
    SegformerForImageClassification (default config = B0) with the hub's key names."""
    t = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = t.SegformerForImageClassification(t.SegformerConfig(num_labels=1000))
    model.save_pretrained(tmp_path / "hf")
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    assert "segformer.encoder.block.0.0.attention.self.key.weight" in sd and "classifier.weight" in sd
    path = tmp_path / "hub-cache" / "pytorch_model.bin"
    path.parent.mkdir()
    torch.save(sd, path)
    return path, sd


def test_fetch_converts_a_hub_file_and_pretrained_name_resolves(wdir, monkeypatch, tmp_path):
    raw, hf = _hf_mit_b0_file(tmp_path)
    monkeypatch.setattr(catalogue, "_hub_download", lambda repo, fn: raw)
    res = CliRunner().invoke(app, ["weights", "fetch", "mit_b0"])
    assert res.exit_code == 0, res.output
    stored = wdir / "mit_b0.pth"
    assert f"stored at {stored}" in res.output.replace("\n", "")
    sd = load_state_dict_file(stored)
    assert "block1.0.attn.kv.weight" in sd and not any(k.startswith(("segformer.", "classifier."))
                                                       for k in sd)
    pre = "segformer.encoder.block.1.1.attention.self."
    torch.testing.assert_close(sd["block2.1.attn.kv.weight"],
                               torch.cat([hf[pre + "key.weight"], hf[pre + "value.weight"]]))
    # model.pretrained: NAME (here through create_model, as a config does)
    from fusionseg.models import create_model

    model = create_model({"name": "segformer", "backbone": "mit_b0", "pretrained": "mit_b0",
                          "num_classes": 2})
    torch.testing.assert_close(model.backbone.norm4.weight,
                               hf["segformer.encoder.layer_norm.3.weight"])
    torch.testing.assert_close(model.backbone.patch_embed1.proj.weight,
                               hf["segformer.encoder.patch_embeddings.0.proj.weight"])
    # whole-file readers (MLE-SAM's neck and decoder) resolve names the same way
    assert set(load_state_dict_file("mit_b0")) == set(sd)


def test_a_hub_file_that_does_not_fit_is_rejected(wdir, monkeypatch, tmp_path):
    torch.manual_seed(0)
    small = create_backbone("mit_b0", embed_dims=(8, 16, 40, 64)).state_dict()
    raw = tmp_path / "pytorch_model.bin"
    torch.save(small, raw)
    monkeypatch.setattr(catalogue, "_hub_download", lambda repo, fn: raw)
    with pytest.raises(ValueError, match="shape mismatch"):
        fetch("mit_b0")
    assert not local_path("mit_b0").exists()


# --------------------------------------------------------------------------- weights list
def test_weights_list_shows_every_entry_and_what_is_here(wdir, monkeypatch):
    e = _entry(monkeypatch)
    wdir.mkdir()
    (wdir / e.filename).write_bytes(b"x")
    monkeypatch.setattr(cli.console, "width", 400)
    res = CliRunner().invoke(app, ["weights", "list"])
    assert res.exit_code == 0, res.output
    rows = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[1:-1]]
            for ln in res.output.splitlines() if ln.startswith("│") and ln.split("│")[1].strip()}
    assert set(rows) == set(CATALOGUE)
    for name, entry in CATALOGUE.items():
        cells = rows[name]
        assert cells[1] == entry.backbone and cells[3] == entry.filename
        assert cells[2] == ", ".join(entry.methods)
        assert cells[-1] == ("yes" if name == e.name else "-")
    assert rows["sam_vit_h"][5] == "md5 4b8939a88964f0f4ff5f5b2642c598a6"
    assert rows["resnet101"][5] == "sha256 63fe2227..."
    assert rows["sam2.1_hiera_base_plus"][7] == (
        "facebook/sam2.1-hiera-base-plus/sam2.1_hiera_base_plus.pt")
    assert str(wdir) in res.output
