"""Block masks and the masked reconstruction loss (pure functions, no nnU-Net).

Masked image modelling for CNNs (SparK, Tian et al. 2023; MAE, He et al. 2022)
hides whole aligned blocks of the input and scores the reconstruction only where
it was hidden. A block that divides the encoder's total stride masks whole
bottleneck cells, so no feature of the deepest stage sees a half-hidden block.
The block masks and the masked error are shared with the other restoration
methods (:mod:`nnunet_ssl.ssl.restoration`).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Union

import torch

from nnunet_ssl.ssl.restoration import block_grid, block_mask, masked_mse

__all__ = ["block_grid", "block_mask", "normalise_blocks", "masked_reconstruction_loss", "visible_at", "SparseEncoder"]


def normalise_blocks(target: torch.Tensor, block: Union[int, Sequence[int]], eps: float = 1e-6) -> torch.Tensor:
    """``target`` with every block of every channel normalised by its own mean and std (MAE's norm_pix_loss)."""
    spatial = target.shape[2:]
    block = (int(block),) * len(spatial) if isinstance(block, int) else tuple(int(b) for b in block)
    grid = block_grid(spatial, block)
    # (B, C, g0, b0, g1, b1, ...): statistics over the b axes
    split = target.reshape(*target.shape[:2], *[v for g, b in zip(grid, block) for v in (g, b)])
    axes = tuple(range(3, split.ndim, 2))
    mean = split.mean(dim=axes, keepdim=True)
    var = split.var(dim=axes, keepdim=True, unbiased=False)
    return ((split - mean) / (var + eps).sqrt()).reshape(target.shape)


def masked_reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               norm_pix_loss: bool = False,
                               block: Union[int, Sequence[int], None] = None) -> torch.Tensor:
    """Mean squared error over the masked voxels (all channels) only.

    Args:
        prediction: ``(B, C, *spatial)``.
        target: The unmasked input, same shape.
        mask: Boolean ``(B, 1, *spatial)`` (or ``(B, C, *spatial)``), True where the input was hidden.
        norm_pix_loss: Compare with the target normalised per block (needs ``block``).
        block: Block size of the mask, for ``norm_pix_loss``.

    Example:
        >>> p, t = torch.tensor([1., 5.]).view(1, 1, 2), torch.tensor([0., 2.]).view(1, 1, 2)
        >>> masked_reconstruction_loss(p, t, torch.tensor([True, False]).view(1, 1, 2)).item()
        1.0
    """
    # float32 whatever autocast predicts in: a float16 sum over a patch overflows
    prediction, target = prediction.float(), target.float()
    if norm_pix_loss:
        if block is None:
            raise ValueError("norm_pix_loss needs the block size")
        target = normalise_blocks(target, block)
    return masked_mse(prediction, target, mask)


def visible_at(visible: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The visible-site mask ``(B, 1, *spatial)`` at a coarser feature map of spatial ``shape``.

    A site of the coarser map is visible when any input voxel of its cell is (the active sites of a
    strided sparse convolution); cells are ``ceil(input / shape)`` voxels per axis, as nnU-Net's strided
    convolutions with padding ``k // 2`` give.

    Example:
        >>> v = torch.zeros(1, 1, 4, 4, dtype=torch.bool); v[0, 0, 0, 1] = True
        >>> visible_at(v, (2, 2))[0, 0].tolist()
        [[True, False], [False, False]]
    """
    spatial = visible.shape[2:]
    shape = tuple(int(s) for s in shape)
    if tuple(spatial) == shape:
        return visible
    factor = [-(-int(a) // b) for a, b in zip(spatial, shape)]
    pool = {1: torch.nn.functional.max_pool1d, 2: torch.nn.functional.max_pool2d,
            3: torch.nn.functional.max_pool3d}[len(shape)]
    out = pool(visible.float(), kernel_size=factor, stride=factor, ceil_mode=True) > 0
    if tuple(out.shape[2:]) != shape:
        raise ValueError(f"a feature map of {list(shape)} is not a strided grid of the patch {list(spatial)}")
    return out


# the blocks of dynamic-network-architectures encoders after which features are re-masked
SPARSE_BLOCKS = ("ConvDropoutNormReLU", "BasicBlockD", "BottleneckD")


class SparseEncoder:
    """Sparse encoding for a dynamic-network-architectures encoder (SparK's sparse convolutions emulated
    with dense ones): hooks on every conv block (and the stem) set the features of masked sites to 0
    while :meth:`active` holds a visible-site mask ``(B, 1, *spatial)``, so masked regions stay empty at
    every stage; outside it the encoder is unchanged. The hooks are installed once (before any
    ``torch.compile`` traces the network), so a step only swaps the mask.

    Example:
        >>> sparse = SparseEncoder(unet.encoder)  # doctest: +SKIP
        >>> with sparse.active(~mask):  # doctest: +SKIP
        ...     output = unet(masked_input)
    """

    def __init__(self, encoder: torch.nn.Module):
        self.visible: Optional[torch.Tensor] = None
        blocks = [m for m in encoder.modules() if type(m).__name__ in SPARSE_BLOCKS]
        stem = getattr(encoder, "stem", None)
        if stem is not None and stem not in blocks:
            blocks.append(stem)
        if not blocks:
            raise ValueError(f"{type(encoder).__name__} has none of the conv blocks {SPARSE_BLOCKS}")
        self.handles = [m.register_forward_hook(self._hook) for m in blocks]

    def _hook(self, module, inputs, output):
        if self.visible is None:
            return output
        return output * visible_at(self.visible, output.shape[2:]).to(output.dtype)

    @contextlib.contextmanager
    def active(self, visible: torch.Tensor):
        self.visible = visible
        try:
            yield self
        finally:
            self.visible = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
