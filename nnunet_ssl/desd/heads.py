"""Projection heads: pooled encoder features -> K logits (DINO's head).

The heads hold most of DeSD's parameters: with K = 65536 the weight-normalised last
layer alone has 16.8M per stage. Three things keep them cheap:

* the last layer is computed by :func:`normalized_linear`, without building a
  normalised copy of its weights;
* the weight gradient of every linear layer in a head is a rank-N matrix (N = rows of
  the batch), so it is kept factored (:class:`LowRankGrad`). During a training step an
  optimiser can then take its step inside the backward pass, block by block of rows,
  without the gradient ever being materialised (see ``nnunet_ssl.desd.step``); on the
  CPU, blocks of wide rows from a few factors are summed as outer products
  (:func:`_outer_products_on_cpu`), where MKL's ``mm`` is slow;
* the gradient sent back to each layer's input, a product with only N rows, is split
  across threads on the CPU (:func:`few_rows_times`).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-12  # as F.normalize


class LowRankGrad:
    """A weight gradient ``dW = g^T z - diag(c) W`` (``(K, D)``), kept factored.

    For a linear layer ``y = z W^T + b`` with upstream gradient ``g`` (``(N, K)``) it is
    ``g^T z`` (``c`` is None). For a weight-normalised layer ``L = z V^T diag(s)``,
    ``s_k = 1 / max(||V_k||, eps)`` and upstream gradient ``G``, it is ``g^T z - diag(c) V``
    with ``g = G diag(s)`` and ``c_k = s_k^2 sum_n g_nk (z_n . V_k)`` (0 for rows whose norm is
    clamped). Rows are computed on demand from the weight as it is *now*, so a caller that
    updates the weight in place must take each block's rows before updating that block.

    Args:
        g: ``(N, K)``.
        z: ``(N, D)``.
        weight: ``(K, D)``, needed only with ``c``.
        c: ``(K,)`` or None.
        dots: ``(N, K)`` ``z W^T``, with ``c``.
        sq_norms: ``(K,)`` squared row norms of ``W``, with ``c``.
    """

    def __init__(self, g: torch.Tensor, z: torch.Tensor, weight: Optional[torch.Tensor] = None,
                 c: Optional[torch.Tensor] = None, dots: Optional[torch.Tensor] = None,
                 sq_norms: Optional[torch.Tensor] = None):
        self.g, self.z, self.weight, self.c = g, z, weight, c
        self._dots, self._sq_norms = dots, sq_norms
        self.shape = (g.shape[1], z.shape[1])

    def rows(self, start: int, stop: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rows ``start:stop`` of the gradient, written into ``out`` when given.

        On the CPU, for at most ``OUTER_MAX_RANK`` factors and rows at least ``OUTER_MIN_WIDTH``
        wide, ``g^T z`` is summed as that many broadcast outer products instead of an ``mm``
        (see :func:`_outer_products_on_cpu`).
        """
        g = self.g[:, start:stop]
        if _outer_products_on_cpu(g, self.z):
            block = torch.mul(g[0, :, None], self.z[0], out=out)
            for n in range(1, g.shape[0]):
                block.addcmul_(g[n, :, None], self.z[n])
        else:
            block = torch.mm(g.t(), self.z, out=out)
        if self.c is not None:
            block.addcmul_(self.weight[start:stop], self.c[start:stop, None], value=-1.0)
        return block

    def dense(self) -> torch.Tensor:
        """The whole ``(K, D)`` gradient."""
        return self.rows(0, self.shape[0])

    def squared_norm(self) -> torch.Tensor:
        """``||dW||^2`` from ``(N, K)`` quantities only (no pass over a ``(K, D)`` matrix).

        Row ``k``: ``||w_k||^2 - 2 c_k (w_k . W_k) + c_k^2 ||W_k||^2`` with ``w_k = sum_n g_nk z_n``,
        ``||w_k||^2 = g_k^T (z z^T) g_k`` and ``w_k . W_k = sum_n g_nk (z_n . W_k)``.
        """
        gram = self.z @ self.z.t()
        per_row = ((gram @ self.g) * self.g).sum(0)
        if self.c is not None:
            per_row = per_row - 2 * self.c * (self.g * self._dots).sum(0) + self.c.square() * self._sq_norms
        return per_row.clamp_min(0).sum()


WeightUpdate = Callable[[torch.Tensor, LowRankGrad], None]

# products with at most this many rows are split across threads on the CPU (see few_rows_times),
# into blocks of at least this many columns
FEW_ROWS = 64
MIN_BLOCK_COLUMNS = 64


# rank-N weight-gradient blocks with at most this many factors and rows at least this wide are
# summed as broadcast outer products on the CPU (see _outer_products_on_cpu)
OUTER_MAX_RANK = 4
OUTER_MIN_WIDTH = 1024


def _outer_products_on_cpu(g: torch.Tensor, z: torch.Tensor) -> bool:
    """Whether ``g^T z`` is summed as ``N`` broadcast outer products rather than by ``mm``.

    MKL's ``mm`` with an inner dimension of 2-4 is slow on the CPU: for a 2048 x 2048 weight,
    forming the gradient blocks that way adds most of the time of the AdamW step they feed. As
    outer products (one ``mul`` and ``N - 1`` ``addcmul_`` over a block that stays in cache)
    they add little to AdamW. With 8 or more factors, or rows narrower than 1024, ``mm`` is
    as fast or faster. Figures: ``docs/performance.md``, item 10.
    """
    return g.device.type == "cpu" and 1 <= g.shape[0] <= OUTER_MAX_RANK and z.shape[1] >= OUTER_MIN_WIDTH


def _few_rows_on_cpu(x: torch.Tensor) -> bool:
    """Whether ``x`` is a CPU matrix of at most ``FEW_ROWS`` rows (the heads' pooled samples)."""
    return x.device.type == "cpu" and x.dim() == 2 and x.shape[0] <= FEW_ROWS


def few_rows_times(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for an ``a`` with a handful of rows (the heads' ``N`` samples).

    On the CPU, MKL computes such a product (``(N, K) @ (K, D)`` with ``N`` around 4) on a
    single thread. Viewing ``b`` as a batch of column blocks, one per thread, makes it a
    ``bmm`` that MKL spreads over the threads; each output element is the same sum. Blocks are
    equal and at least ``MIN_BLOCK_COLUMNS`` wide. Elsewhere (CUDA, one thread, more rows,
    narrow widths) it is plain ``a @ b``.

    Example:
        >>> a, b = torch.randn(4, 6), torch.randn(6, 8)
        >>> torch.allclose(few_rows_times(a, b), a @ b, atol=1e-6)
        True
    """
    n, k = a.shape
    d = b.shape[1]
    if not _few_rows_on_cpu(a) or b.device.type != "cpu" or b.stride(1) != 1:
        return a @ b
    parts = min(torch.get_num_threads(), d // MIN_BLOCK_COLUMNS)
    while parts > 1 and d % parts:  # equal blocks
        parts -= 1
    if parts < 2:
        return a @ b
    blocks = b.view(k, parts, d // parts).permute(1, 0, 2)  # (parts, K, D / parts), no copy
    return torch.bmm(a.expand(parts, n, k), blocks).permute(1, 0, 2).reshape(n, d)


class _NormalizedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, update):
        norms = torch.linalg.vector_norm(weight.detach(), dim=1)  # no (K, D) temporary
        sq_norms = norms.square()
        inv_norms = norms.clamp_min(NORM_EPS).reciprocal()
        dots = torch.mm(weight, z.t()).t()  # (N, K); V z^T reads V row by row, faster than z V^T on the CPU
        ctx.save_for_backward(z, weight, inv_norms, sq_norms, dots)
        ctx.update = update
        return (dots * inv_norms).contiguous()

    @staticmethod
    def backward(ctx, grad):
        z, weight, inv_norms, sq_norms, dots = ctx.saved_tensors
        g = grad * inv_norms
        grad_z = few_rows_times(g, weight) if ctx.needs_input_grad[0] else None  # before any update of the weight
        if not ctx.needs_input_grad[1]:
            return grad_z, None, None
        unclamped = sq_norms.sqrt() > NORM_EPS
        c = torch.where(unclamped, (g * dots).sum(0) * inv_norms.square(), torch.zeros_like(inv_norms))
        weight_grad = LowRankGrad(g, z, weight.detach(), c, dots, sq_norms)
        if ctx.update is not None:
            ctx.update(weight, weight_grad)  # the optimiser consumes the gradient here
            return grad_z, None, None
        return grad_z, weight_grad.dense(), None


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, update):
        ctx.save_for_backward(x, weight)
        ctx.update = update
        # W x^T reads W row by row: with few rows it is up to twice as fast as x W^T on the CPU
        y = torch.mm(weight, x.t()).t()
        return (y + bias if bias is not None else y).contiguous()

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = few_rows_times(grad, weight) if ctx.needs_input_grad[0] else None
        grad_b = grad.sum(0) if ctx.needs_input_grad[2] else None
        if not ctx.needs_input_grad[1]:
            return grad_x, None, grad_b, None
        weight_grad = LowRankGrad(grad, x)
        if ctx.update is not None:
            ctx.update(weight, weight_grad)
            return grad_x, None, grad_b, None
        return grad_x, weight_grad.dense(), grad_b, None


class HeadLinear(nn.Linear):
    """``nn.Linear`` on ``(N, in)`` inputs whose weight gradient can go to ``weight_update``.

    Same parameters and state-dict keys as ``nn.Linear``; with ``weight_update`` None
    (the default) it computes the same values and gradients. On the CPU, inputs of at most
    ``FEW_ROWS`` rows (the heads' pooled features) are multiplied as ``W x^T`` whether or
    not an update is set, so the teacher's head and the dense-gradient path get the faster
    product too.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_update: Optional[WeightUpdate] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or torch.is_autocast_enabled(x.device.type):
            return F.linear(x, self.weight, self.bias)
        if self.weight_update is None and not _few_rows_on_cpu(x):
            return F.linear(x, self.weight, self.bias)
        return _Linear.apply(x, self.weight, self.bias, self.weight_update)


def normalized_linear(z: torch.Tensor, weight: torch.Tensor, update: Optional[WeightUpdate] = None) -> torch.Tensor:
    """``F.linear(z, F.normalize(weight, dim=1))`` without the normalised copy of ``weight``.

    Computed as ``(z V^T) * (1 / ||V_row||)`` in the weight's precision (autocast is off
    inside: the loss upcasts the logits to float32 anyway). Gradients are those of the expression above. When
    ``update`` is given, the backward pass hands it the weight and its factored gradient
    (:class:`LowRankGrad`) instead of accumulating ``weight.grad``: the caller applies
    its optimiser step there, and ``weight.grad`` stays None.

    Example:
        >>> v = torch.randn(6, 3); z = torch.randn(2, 3)
        >>> torch.allclose(normalized_linear(z, v), F.linear(z, F.normalize(v, dim=1)), atol=1e-6)
        True
    """
    with torch.autocast(z.device.type, enabled=False):
        return _NormalizedLinear.apply(z.to(weight.dtype), weight, update)


class ProjectionHead(nn.Module):
    """Three-layer MLP, L2 normalisation and a weight-normalised last layer of width ``out_dim``.

    ``in_dim -> hidden -> hidden -> bottleneck`` with GELU (and optional batch norm)
    between the layers and none after the last one. The last layer is a linear map
    without bias whose rows are normalised to unit length at every forward: this is
    weight normalisation with the gain fixed at 1 (DINO's ``norm_last_layer=True``),
    so ``last_layer.weight`` holds only the directions.

    ``weight_update`` (and the same attribute of the MLP's :class:`HeadLinear` layers),
    when set by :func:`nnunet_ssl.desd.step.train_step` for one step, receives the last
    layer's weight gradient during the backward pass; see :func:`normalized_linear`.

    Example:
        >>> head = ProjectionHead(32, out_dim=64, hidden_dim=16, bottleneck_dim=8)
        >>> head(torch.randn(4, 32)).shape
        torch.Size([4, 64])
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, use_bn: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim, hidden_dim, hidden_dim]
        for a, b in zip(dims[:-1], dims[1:]):
            layers.append(HeadLinear(a, b))
            if use_bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(nn.GELU())
        layers.append(HeadLinear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.weight_update: Optional[WeightUpdate] = None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The ``bottleneck_dim`` embedding before normalisation (what RankMe measures)."""
        return self.mlp(x)

    def prototypes(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of unit-length embeddings ``z``: the weight-normalised last layer."""
        return normalized_linear(z, self.last_layer.weight, self.weight_update)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.embed(x), dim=-1))


class _GlobalAveragePool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feature_map):
        ctx.shape = feature_map.shape
        return feature_map.flatten(2).mean(dim=2)

    @staticmethod
    def backward(ctx, grad):
        n = ctx.shape[2:].numel()
        # an expanded (stride-0) view, where `mean`'s backward materialises a full-size tensor:
        # autograd then adds it in place into the gradient the next stage sends to this feature map
        return (grad / n).view(*grad.shape, *[1] * (len(ctx.shape) - 2)).expand(ctx.shape)


def global_average_pool(feature_map: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial) -> (N, C)``, the mean over the spatial axes.

    The gradient is a broadcast view rather than a full-size tensor: the heads on the
    early, high-resolution stages then cost no full-size gradient copy of their own.

    Example:
        >>> global_average_pool(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3])
    """
    return _GlobalAveragePool.apply(feature_map)
