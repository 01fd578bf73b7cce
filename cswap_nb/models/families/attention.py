"""Attention heads as units (cswap_nb/METHOD.md §4): which attention modules have heads that can be tested
and removed exactly (timm's standard ``Attention``), what one head's weights are, how heads are removed
from the module, how a rebuilt module's head count follows its resized ``qkv``, and the attention weights
a head computes (for drawing them). The core's unit finding, masking and surgery call these functions for
what is particular to timm's attention: which modules qualify, how a head's weights are laid out in ``qkv`` and
``proj``, how heads are removed; the core still names ``qkv`` and ``proj`` where it marks a head's mask point
and leaves those linears out of the channel search."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn


def head_attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Attention modules whose heads can be pruned exactly: timm's standard ``Attention``.

    Needs ``qkv``/``proj`` linears and an ``attn_dim`` attribute (the forward reshapes by
    ``attn_dim``, recent timm), no norm before ``proj`` (``scale_norm``; a LayerNorm over the
    heads would couple them) and no output gate.
    """
    try:
        from timm.layers.attention import Attention
    except ImportError:  # pragma: no cover - timm is a dependency
        return {}
    found = {}
    for name, m in model.named_modules():
        if type(m) is not Attention or not hasattr(m, "attn_dim"):
            continue
        if not isinstance(getattr(m, "norm", nn.Identity()), nn.Identity) or getattr(m, "gate", None) is not None:
            continue
        if m.qkv.out_features != 3 * m.num_heads * m.head_dim or m.proj.in_features != m.num_heads * m.head_dim:
            continue
        found[name] = m
    return found


def head_weights(attn: nn.Module) -> Tensor:
    """One row per head: its q, k and v rows of ``qkv`` and its input columns of ``proj``, flattened
    (what the head's magnitude is measured on)."""
    h, d = attn.num_heads, attn.head_dim
    w_qkv = attn.qkv.weight.detach().reshape(3, h, d, -1).permute(1, 0, 2, 3).reshape(h, -1)
    w_proj = attn.proj.weight.detach().reshape(-1, h, d).permute(1, 0, 2).reshape(h, -1)
    return torch.cat([w_qkv, w_proj], dim=1)


def head_removal(attn: nn.Module, keep: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """(parameter, removed mask) for removing the heads of ``attn`` (:func:`remove_heads`): the q, k and v
    rows of ``qkv`` (weight and bias) and the input columns of ``proj``, head ``keep`` spared."""
    h, d = attn.num_heads, attn.head_dim
    drop = torch.ones(h, dtype=torch.bool)
    if keep is not None:
        drop[keep] = False
    qkv, proj = attn.qkv, attn.proj
    yield qkv.weight, drop.view(1, h, 1, 1).expand(3, h, d, qkv.in_features).flatten()
    if qkv.bias is not None:
        yield qkv.bias, drop.view(1, h, 1).expand(3, h, d).flatten()
    yield proj.weight, drop.view(1, h, 1).expand(proj.out_features, h, d).flatten()


def remove_heads(attn: nn.Module, heads: list[int]) -> nn.Module:
    """Delete whole heads of a timm ``Attention`` in place.

    Slices the heads' q, k and v rows out of ``qkv`` (weight and bias) and their input
    columns out of ``proj``, then sets ``num_heads`` and ``attn_dim``; ``head_dim`` and the
    softmax scale stay as they are, and the embedding width is unchanged.
    """
    h, d = attn.num_heads, attn.head_dim
    drop = sorted({int(i) for i in heads})
    if any(i < 0 or i >= h for i in drop):
        raise ValueError(f"head indices must lie in [0, {h - 1}], got {drop}")
    keep = [i for i in range(h) if i not in set(drop)]
    if not keep:
        raise ValueError("cannot remove every head of an attention module")
    idx = torch.tensor(keep)
    qkv, proj = attn.qkv, attn.proj
    with torch.no_grad():
        w = qkv.weight.reshape(3, h, d, qkv.in_features)[:, idx].reshape(3 * len(keep) * d, qkv.in_features)
        qkv.weight = nn.Parameter(w.clone(), requires_grad=qkv.weight.requires_grad)
        if qkv.bias is not None:
            b = qkv.bias.reshape(3, h, d)[:, idx].reshape(-1)
            qkv.bias = nn.Parameter(b.clone(), requires_grad=qkv.bias.requires_grad)
        pw = proj.weight.reshape(proj.out_features, h, d)[:, idx].reshape(proj.out_features, len(keep) * d)
        proj.weight = nn.Parameter(pw.clone(), requires_grad=proj.weight.requires_grad)
    qkv.out_features = w.shape[0]
    proj.in_features = pw.shape[1]
    attn.num_heads = len(keep)
    attn.attn_dim = len(keep) * d
    return attn


def fit_heads_to_qkv(model: nn.Module) -> None:
    """After a module's ``qkv`` was given a pruned shape (rebuilding a saved pruned model), set each attention
    module's head count (and ``attn_dim``) from it; ``head_dim`` is unchanged by head removal."""
    for module in model.modules():
        qkv, head_dim = getattr(module, "qkv", None), getattr(module, "head_dim", None)
        if isinstance(qkv, nn.Linear) and isinstance(head_dim, int) and hasattr(module, "num_heads"):
            heads, rest = divmod(qkv.out_features, 3 * head_dim)
            if rest:
                raise ValueError(f"qkv has {qkv.out_features} outputs, not a multiple of 3 x head_dim ({head_dim})")
            module.num_heads = heads
            if hasattr(module, "attn_dim"):
                module.attn_dim = heads * head_dim


def attention_weights(attn: nn.Module, tokens: Tensor) -> Tensor:
    """The softmax attention weights ``(N, heads, tokens, tokens)`` of a timm ``Attention`` on its input
    ``tokens`` (N, tokens, dim), computed from its own ``qkv`` (a head-pruned module gives its remaining
    heads)."""
    b, n, _ = tokens.shape
    qkv = attn.qkv(tokens).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)


__all__ = ["head_attention_modules", "head_weights", "head_removal", "remove_heads", "fit_heads_to_qkv",
           "attention_weights"]
