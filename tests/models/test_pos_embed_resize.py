"""Position-embedding resizes keep rows as rows and columns as columns, on non-square grids.

Each table is a row/column-indexed grid (channel 0 holds the row index ``i``, channel 1 the
column index ``j``, channel 2 ``10 i + j``) resized to a grid with a different number of rows
than columns. Two independent checks: the result equals ``torch.nn.functional.interpolate`` of
the correctly oriented ``[1, C, rows, cols]`` grid with the official code's settings, and
channel 0 is constant along every output row (channel 1 along every column), which no
transposed resize satisfies. Sources of the settings:

- DINOv2, official ``vision_transformer.py`` ``interpolate_pos_encoding``: bicubic, with
  ``interpolate_offset`` 0.1 the scale factor ``((rows + 0.1) / M, (cols + 0.1) / M)`` (its
  ``w0`` is the row count: ``prepare_tokens_with_masks`` unpacks ``B, nc, w, h = x.shape``),
  with offset 0 the target size and ``antialias`` (the hub's ``_reg4`` models).
- SAM 2 Hiera, official ``hieradet.py`` ``_get_pos_embed``: ``F.interpolate(pos_embed,
  size=(h, w), mode="bicubic")`` plus ``pos_embed_window`` tiled.
- SAM ViT: bicubic, ``align_corners=False`` (``resize_sam_pos_embed``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusionseg.models import create_backbone
from fusionseg.models.backbones.hiera import HIERA_TINY
from fusionseg.models.backbones.sam_vit import resize_sam_pos_embed


def indexed_grid(rows: int, cols: int, channels: int) -> torch.Tensor:
    """``[1, C, rows, cols]``: channel 0 = row index, 1 = column index, 2 = 10 row + column,
    the rest 0."""
    g = torch.zeros(1, channels, rows, cols)
    i = torch.arange(rows, dtype=torch.float32).view(rows, 1)
    j = torch.arange(cols, dtype=torch.float32).view(1, cols)
    g[0, 0] = i.expand(rows, cols)
    g[0, 1] = j.expand(rows, cols)
    g[0, 2] = 10 * i + j
    return g


def assert_rows_and_columns(grid: torch.Tensor) -> None:
    """``grid [1, C, rows, cols]``: channel 0 depends on the row only and grows with it,
    channel 1 on the column only and grows with it."""
    rows, cols = grid.shape[-2:]
    row_part, col_part = grid[0, 0], grid[0, 1]
    torch.testing.assert_close(row_part, row_part[:, :1].expand(rows, cols), atol=1e-5, rtol=0)
    torch.testing.assert_close(col_part, col_part[:1, :].expand(rows, cols), atol=1e-5, rtol=0)
    assert torch.all(row_part[1:, 0] > row_part[:-1, 0])
    assert torch.all(col_part[0, 1:] > col_part[0, :-1])


# --------------------------------------------------------------------------- DINOv2
def _dinov2(**kw):
    m = create_backbone("dinov2_vits14", embed_dim=32, depth=1, num_heads=2, out_indices=(0,),
                        img_size=56, **kw).eval()  # a 4 x 4 pretraining grid
    with torch.no_grad():
        m.pos_embed[0, 0] = 7.0  # the class token's entry passes through
        m.pos_embed[0, 1:] = indexed_grid(4, 4, 32).flatten(2).transpose(1, 2)[0]  # row-major
    return m


@pytest.mark.parametrize("offset, antialias", [(0.1, False), (0.0, True), (0.0, False)])
@pytest.mark.parametrize("gh, gw", [(3, 6), (6, 3), (2, 5)])
def test_dinov2_interpolation_keeps_rows_and_columns(offset, antialias, gh, gw):
    m = _dinov2(interpolate_offset=offset, interpolate_antialias=antialias)
    pe = m.interpolate_pos_encoding(gh, gw)
    assert pe.shape == (1, 1 + gh * gw, 32)
    assert torch.all(pe[0, 0] == 7.0)
    grid = pe[:, 1:].transpose(1, 2).reshape(1, 32, gh, gw)  # tokens are row-major
    assert_rows_and_columns(grid)
    src = indexed_grid(4, 4, 32)
    if offset:
        ref = F.interpolate(src, scale_factor=((gh + offset) / 4, (gw + offset) / 4),
                            mode="bicubic", antialias=antialias)
    else:
        ref = F.interpolate(src, size=(gh, gw), mode="bicubic", antialias=antialias)
    torch.testing.assert_close(grid, ref)


def test_dinov2_tokens_get_the_embedding_of_their_own_row_and_column():
    """Through ``prepare_tokens`` with a zero patch embedding: the token of image patch
    ``(r, c)`` (row-major, 3 x 6 patches of a 42 x 84 image) carries row ``r``'s value."""
    m = _dinov2()
    with torch.no_grad():
        for p in m.patch_embed.parameters():
            p.zero_()
        m.cls_token.zero_()
    tokens, gh, gw = m.prepare_tokens(torch.randn(1, 3, 42, 84))
    assert (gh, gw) == (3, 6)
    grid = tokens[:, 1:].transpose(1, 2).reshape(1, 32, 3, 6)
    assert_rows_and_columns(grid)
    ref = F.interpolate(indexed_grid(4, 4, 32), scale_factor=(3.1 / 4, 6.1 / 4), mode="bicubic")
    torch.testing.assert_close(grid, ref)


# --------------------------------------------------------------------------- SAM 2 Hiera
def _hiera():
    m = create_backbone("sam2.1_hiera_t", **HIERA_TINY).eval()  # background grid 3 x 5
    with torch.no_grad():
        c = m.pos_embed.shape[1]
        m.pos_embed.copy_(indexed_grid(3, 5, c))
        win = torch.zeros_like(m.pos_embed_window)  # [1, C, 4, 4]
        win[0, 3] = torch.arange(16.0).view(4, 4)  # 4 a + b at window position (a, b)
        m.pos_embed_window.copy_(win)
    return m


@pytest.mark.parametrize("h, w", [(8, 16), (12, 8)])
def test_hiera_background_resize_and_window_tiling_keep_rows_and_columns(h, w):
    m = _hiera()
    pe = m.get_pos_embed(h, w)  # [1, h, w, C]
    assert pe.shape == (1, h, w, m.pos_embed.shape[1])
    grid = pe.permute(0, 3, 1, 2)
    assert_rows_and_columns(grid)
    ref = F.interpolate(indexed_grid(3, 5, grid.shape[1]), size=(h, w), mode="bicubic")
    torch.testing.assert_close(grid[:, :3], ref[:, :3])
    y = torch.arange(h).view(h, 1) % 4
    x = torch.arange(w).view(1, w) % 4
    torch.testing.assert_close(grid[0, 3], (4 * y + x).float())  # window tiled, not transposed


def test_hiera_embed_adds_the_position_of_each_tokens_row_and_column():
    m = _hiera()
    with torch.no_grad():
        for p in m.patch_embed.parameters():
            p.zero_()
    tokens = m.embed(torch.randn(1, 3, 32, 64))  # [1, 8, 16, C] (stride 4)
    assert tokens.shape[1:3] == (8, 16)
    grid = tokens.permute(0, 3, 1, 2)
    assert_rows_and_columns(grid)
    ref = F.interpolate(indexed_grid(3, 5, grid.shape[1]), size=(8, 16), mode="bicubic")
    torch.testing.assert_close(grid[:, :3], ref[:, :3])


# --------------------------------------------------------------------------- SAM ViT
@pytest.mark.parametrize("size", [(2, 3), (6, 4)])
def test_sam_pos_embed_resize_keeps_rows_and_columns(size):
    pos = indexed_grid(4, 4, 8).permute(0, 2, 3, 1)  # channels last, as SAM stores it
    out = resize_sam_pos_embed(pos, size)
    assert out.shape == (1, *size, 8)
    grid = out.permute(0, 3, 1, 2)
    assert_rows_and_columns(grid)
    ref = F.interpolate(indexed_grid(4, 4, 8), size=size, mode="bicubic", align_corners=False)
    torch.testing.assert_close(grid, ref)


def test_sam_vit_tokens_get_the_embedding_of_their_own_row_and_column():
    m = create_backbone("sam_vit_b", embed_dim=32, depth=2, num_heads=2, window_size=3,
                        global_attn_indexes=(1,), img_size=64, out_chans=16).eval()  # 4 x 4
    with torch.no_grad():
        m.pos_embed.copy_(indexed_grid(4, 4, 32).permute(0, 2, 3, 1))
        for p in m.patch_embed.parameters():
            p.zero_()
    tokens, gh, gw = m.prepare_tokens(torch.randn(1, 3, 32, 96))
    assert (gh, gw) == (2, 6)
    grid = tokens.transpose(1, 2).reshape(1, 32, 2, 6)
    assert_rows_and_columns(grid)
    ref = F.interpolate(indexed_grid(4, 4, 32), size=(2, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(grid, ref)
