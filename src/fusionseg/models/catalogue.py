"""The catalogue of pretrained encoder weights the methods start from, and fetching them.

Every method of fusionseg adapts an encoder pretrained elsewhere. :data:`CATALOGUE` lists those
files. Each backbone file declares its own (:class:`PretrainedWeights`: official file name, URL,
published checksums, Hugging Face hub file, the methods that use it) and registers them when
it is imported, with :func:`register_pretrained`; this module only holds the generic machinery:
lookup, the weights directory, downloads and checksums. ``fusionseg weights list`` prints the
catalogue, in registration order.

``model.pretrained`` (and ``create_backbone(..., pretrained=)``) takes a local path or a
catalogue name; :func:`resolve_pretrained` turns a name into the file in the weights directory
(``$FUSIONSEG_WEIGHTS``, default ``~/.cache/fusionseg/weights``), where :func:`fetch`
(``fusionseg weights fetch NAME``) stores it:

* from the Hugging Face hub (``huggingface_hub.hf_hub_download``, its cache and offline mode)
  when the entry is hosted there: the official file itself (``hf_format="official"``), or a
  ``transformers`` conversion (``hf_format="transformers"``) renamed back to the official key
  names by the backbone's ``checkpoint_filter_fn`` and checked against the full-size backbone;
* else, or when the hub cannot be reached, from the official URL (``urllib``, to a temporary
  file in the weights directory, checksum verified where one is known, then renamed into
  place);
* with no network it raises :class:`WeightsNotAvailableError`, one line naming the URL to
  download and the exact path to put the file at (the CLI prints it and exits with status 2).

Checksums are only those published with the files (e.g. the torchvision file names carry the
first 8 hex digits of the file's SHA-256, the ``torch.hub`` ``check_hash`` convention); a
published prefix is checked as a prefix. Sizes are approximate (MB = 10^6 bytes, from the
parameter counts at fp32) and only shown.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..files import atomic_path

__all__ = [
    "CATALOGUE",
    "ChecksumError",
    "PretrainedWeights",
    "WeightsNotAvailableError",
    "fetch",
    "find_pretrained",
    "get_pretrained",
    "list_pretrained",
    "local_path",
    "register_pretrained",
    "resolve_pretrained",
    "verify_checksum",
    "weights_dir",
]

#: environment variable naming the weights directory
WEIGHTS_ENV = "FUSIONSEG_WEIGHTS"
#: the weights directory without :data:`WEIGHTS_ENV`
DEFAULT_WEIGHTS_DIR = "~/.cache/fusionseg/weights"


class WeightsNotAvailableError(CheckpointError, FileNotFoundError):
    """Pretrained weights that are not on disk and could not be downloaded (or were not fetched
    yet). The message is one line: what to download (URL) and where to put it (path).

    Attributes: ``name`` (catalogue name), ``url`` (where to download it), ``path`` (where it
    is expected).
    """

    def __init__(self, message: str, name: str, url: str | None, path: Path) -> None:
        super().__init__(" ".join(message.split()))
        self.name, self.url, self.path = name, url, path


class ChecksumError(CheckpointError):
    """A downloaded file whose checksum differs from the published one (the file is deleted)."""


@dataclass(frozen=True)
class PretrainedWeights:
    """One pretrained-encoder file.

    Attributes:
        name: catalogue name (``model.pretrained: NAME``).
        backbone: our backbone name (``fusionseg info``) the file loads into.
        methods: registered model names that use this encoder.
        source: who released it and where (paper code repository).
        filename: the official file name, also its name in the weights directory.
        url: the official direct download URL; ``None`` where the release is not a direct link
            (NVlabs' Google Drive / OneDrive folders).
        size_mb: approximate size (MB = 10^6 bytes).
        sha256: the published SHA-256 of the official file, or its published prefix (the
            verification checks that the digest starts with it); ``None`` when none is
            published.
        md5: the same for MD5.
        hf_repo, hf_filename: where the weights are on the Hugging Face hub (``None``: not
            fetched from there).
        hf_format: ``"official"`` (the hub file is the official file) or ``"transformers"``
            (a ``transformers`` conversion, renamed to the official keys when fetched).
    """

    name: str
    backbone: str
    methods: tuple[str, ...]
    source: str
    filename: str
    url: str | None = None
    size_mb: float | None = None
    sha256: str | None = None
    md5: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    hf_format: str = "official"

    @property
    def hub_url(self) -> str | None:
        """``https://huggingface.co/{hf_repo}/resolve/main/{hf_filename}`` or ``None``."""
        if not self.hf_repo:
            return None
        return f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.hf_filename}"

    @property
    def download_url(self) -> str | None:
        """The URL to name for a manual download: the official one, else the hub file (whose
        keys the backbone's ``checkpoint_filter_fn`` converts when placed as :attr:`filename`)."""
        return self.url or self.hub_url

    def checksum_text(self) -> str:
        """``sha256 0676ba61...`` / ``md5 01ec64d2...`` / ``-``."""
        parts = [f"{kind} {v}{'' if len(v) >= (64 if kind == 'sha256' else 32) else '...'}"
                 for kind, v in (("sha256", self.sha256), ("md5", self.md5)) if v]
        return ", ".join(parts) or "-"


#: ``name -> PretrainedWeights``, in registration order (filled by the backbone files when they
#: are imported, through :func:`register_pretrained`)
CATALOGUE: dict[str, PretrainedWeights] = {}


def register_pretrained(*entries: PretrainedWeights) -> tuple[PretrainedWeights, ...]:
    """Add ``entries`` to :data:`CATALOGUE` (called by each backbone file for its own
    pretrained files); returns them.

    Registering an equal entry again (a re-imported module) changes nothing.

    Raises:
        ValueError: a name already registered with other contents.
    """
    for e in entries:
        old = CATALOGUE.get(e.name)
        if old is not None and old != e:
            raise ValueError(f"pretrained weights {e.name!r} are already in the catalogue "
                             f"(backbone {old.backbone}, file {old.filename})")
        CATALOGUE[e.name] = e
    return entries


def list_pretrained() -> list[PretrainedWeights]:
    """The catalogue entries in listing order."""
    return list(CATALOGUE.values())


def find_pretrained(name: str) -> PretrainedWeights | None:
    """The entry called ``name``: a catalogue name, the backbone name of exactly one entry
    (``sam2.1_hiera_b+`` -> ``sam2.1_hiera_base_plus``) or an official file name
    (``sam_vit_b_01ec64.pth``, ``resnet101-63fe2227.pth``); ``None`` otherwise."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    by_file = [e for e in CATALOGUE.values() if e.filename == name]
    if by_file:
        return by_file[0]
    by_backbone = [e for e in CATALOGUE.values() if e.backbone == name]
    return by_backbone[0] if len(by_backbone) == 1 else None


def get_pretrained(name: str) -> PretrainedWeights:
    """Like :func:`find_pretrained`, raising for unknown names.

    Raises:
        ConfigError: ``name`` is not in the catalogue (the message lists the names).
    """
    entry = find_pretrained(name)
    if entry is None:
        raise ConfigError(f"{name!r} is not in the pretrained-weight catalogue; known: "
                         f"{', '.join(CATALOGUE)}")
    return entry


def weights_dir(path: str | Path | None = None) -> Path:
    """The weights directory: ``path``, else ``$FUSIONSEG_WEIGHTS``, else
    ``~/.cache/fusionseg/weights`` (``~`` expanded; not created)."""
    chosen = path if path is not None else (os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR)
    return Path(chosen).expanduser()


def local_path(entry: PretrainedWeights | str, directory: str | Path | None = None) -> Path:
    """Where ``entry`` (or the entry called so) lives in the weights directory: ``DIR /
    filename``."""
    if isinstance(entry, str):
        entry = get_pretrained(entry)
    return weights_dir(directory) / entry.filename


def _fetch_hint(entry: PretrainedWeights, path: Path) -> str:
    src = f" (from {entry.download_url})" if entry.download_url else ""
    return (f"run `fusionseg weights fetch {entry.name}` or put {entry.filename}{src} at "
            f"{path}")


def resolve_pretrained(pretrained: str | Path, directory: str | Path | None = None) -> Path:
    """The local file of ``model.pretrained``: an existing path as it is, else a catalogue name
    (see :func:`find_pretrained`) as its file in the weights directory.

    Args:
        pretrained: a path to a file or Hugging Face folder, or a catalogue name.
        directory: the weights directory (default :func:`weights_dir`).

    Returns:
        The path (not read here).

    Raises:
        WeightsNotAvailableError: a catalogue name not fetched yet; the one-line message says
            ``run `fusionseg weights fetch NAME` or put FILE (from URL) at PATH``.
        CheckpointError: neither an existing path nor a catalogue name; the message names both
            options (a local path, or one of the catalogue names). A missing path whose file
            name is a catalogue file also names the catalogue entry to use instead.
    """
    path = Path(pretrained).expanduser()
    if path.exists():
        return path
    text = str(pretrained)
    entry = find_pretrained(text) if path.name == text else None
    if entry is not None:
        local = local_path(entry, directory)
        if local.is_file():
            return local
        raise WeightsNotAvailableError(
            f"pretrained weights {entry.name!r} are not in {local.parent}: "
            f"{_fetch_hint(entry, local)}", entry.name, entry.download_url, local)
    known = find_pretrained(path.name)
    if known is not None:
        raise CheckpointError(
            f"pretrained weights {text!r}: no such file; it is the catalogue file of "
            f"{known.name!r}: set model.pretrained: {known.name} and "
            f"{_fetch_hint(known, local_path(known, directory))}")
    raise CheckpointError(
        f"pretrained weights {text!r}: no such file, and not a catalogue name; give a local "
        f"path or one of {', '.join(CATALOGUE)} (`fusionseg weights list`)")


# --------------------------------------------------------------------------- checksums
def _digests(path: Path) -> dict[str, str]:
    h = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for d in h.values():
                d.update(chunk)
    return {k: d.hexdigest() for k, d in h.items()}


def _check(entry: PretrainedWeights, digests: dict[str, str], what: str) -> None:
    for kind in ("sha256", "md5"):
        want = getattr(entry, kind)
        if want and not digests[kind].startswith(want.lower()):
            raise ChecksumError(f"{what}: {kind} {digests[kind]} does not match the published "
                                f"{want} of {entry.filename}; the file was deleted")


def verify_checksum(path: str | Path, entry: PretrainedWeights) -> None:
    """Check ``path`` against the published checksum(s) of ``entry`` (a no-op without one).

    Raises:
        ChecksumError: a digest that does not start with the published value (the file is
            kept; :func:`fetch` deletes its downloads).
    """
    if entry.sha256 or entry.md5:
        _check(entry, _digests(Path(path)), str(path))


# --------------------------------------------------------------------------- downloads
def _hub_download(repo_id: str, filename: str) -> Path:
    """``huggingface_hub.hf_hub_download`` into the Hugging Face cache (tests replace this)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename))


def _open_url(url: str, timeout: float):
    """``urllib.request.urlopen`` (tests replace this)."""
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "fusionseg"})
    return urllib.request.urlopen(req, timeout=timeout)


Progress = Callable[[int, int | None], None]


def _download_url(entry: PretrainedWeights, dst: Path, progress: Progress | None,
                  timeout: float = 60.0) -> None:
    """Stream ``entry.url`` to a temporary file next to ``dst``, hashing as it goes; verify;
    fsync; rename into place. Nothing is left behind on failure."""
    h = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    with atomic_path(dst) as tmp:
        with _open_url(entry.url, timeout) as resp, open(tmp, "wb") as f:
            total = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            total = int(total) if total else None
            done = 0
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                for d in h.values():
                    d.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if total is not None and done != total:
            raise OSError(f"download ended after {done} of {total} bytes")
        _check(entry, {k: d.hexdigest() for k, d in h.items()}, entry.url)


def _place(src: Path, dst: Path) -> None:
    """Put a copy of ``src`` (a hub cache file) at ``dst`` atomically: a hard link where the
    filesystem allows (no second copy on disk), else a byte copy."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src.resolve(), tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _store_converted(entry: PretrainedWeights, raw: Path, dst: Path) -> None:
    """A ``transformers``-format hub file -> the official key names (the backbone's
    ``checkpoint_filter_fn(state_dict, backbone)``), checked key by key and shape by shape
    against the full-size backbone (built on the meta device), written atomically to ``dst``."""
    import torch

    from .backbones import create_backbone
    from .weights import CheckpointMismatchError, load_state_dict_file, save_state_dict

    with torch.device("meta"):
        backbone = create_backbone(entry.backbone)
    sd = type(backbone).checkpoint_filter_fn(load_state_dict_file(raw), backbone)
    own = backbone.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(raw, missing, unexpected, mismatched)
    save_state_dict(sd, dst, {"fusionseg_source": f"hf://{entry.hf_repo}/{entry.hf_filename}"})


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def fetch(name: str, directory: str | Path | None = None, *, force: bool = False,
          progress: Progress | None = None) -> Path:
    """Download the catalogue entry ``name`` into the weights directory (see the module
    docstring for the order of sources) and return its path.

    Args:
        name: a catalogue name (or another name :func:`find_pretrained` accepts).
        directory: the weights directory (default :func:`weights_dir`); created if needed.
        force: download again even when the file is already there.
        progress: ``progress(bytes_done, bytes_total_or_None)`` during URL downloads (the hub
            client shows its own progress).

    Returns:
        ``DIR / entry.filename``, which :func:`resolve_pretrained` finds.

    Raises:
        ConfigError: unknown ``name``.
        WeightsNotAvailableError: no source could be reached (one line: the reasons, the URL to
            download and the path to put it at).
        ChecksumError: a download whose checksum differs from the published one (deleted).
        CheckpointMismatchError: a hub conversion that does not fit the backbone.
    """
    entry = get_pretrained(name)
    dst = local_path(entry, directory)
    if dst.is_file() and not force:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    reasons: list[str] = []
    if entry.hf_repo:
        try:
            raw = _hub_download(entry.hf_repo, entry.hf_filename)
        except Exception as exc:  # the hub client raises many types (offline, HTTP, missing)
            reasons.append(f"hub {entry.hf_repo}: {_reason(exc)}")
        else:
            if entry.hf_format == "transformers":
                _store_converted(entry, raw, dst)
            else:
                verify_checksum(raw, entry)
                _place(raw, dst)
            return dst
    if entry.url:
        try:
            _download_url(entry, dst, progress)  # a ChecksumError propagates
        except OSError as exc:  # URLError, HTTPError, timeouts, refused connections
            reasons.append(f"{entry.url}: {_reason(exc)}")
        else:
            return dst
    raise WeightsNotAvailableError(
        f"cannot download {entry.name} ({'; '.join(reasons)}): download {entry.download_url} "
        f"and put it at {dst}", entry.name, entry.download_url, dst)
