"""timm's VisionTransformer: embedding stem, blocks and head as parts; token-shaped unit outputs (MLP
hidden units, whole attention heads); a spec of the constructor arguments in :data:`VIT_KEYS`."""
from __future__ import annotations

from torch import Tensor, nn

from .base import Family, Part, Spec, module_part, register, same_tree

# VisionTransformer arguments a ``timm.vit`` spec may hold (everything else at timm's default)
VIT_KEYS = ("img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth",
            "num_heads", "mlp_ratio", "qkv_bias", "qk_norm", "init_values", "class_token", "no_embed_class",
            "reg_tokens", "pre_norm", "final_norm", "fc_norm")


@register
class TimmViT(Family):
    name = "timm.vit"
    spec_families = ("timm.vit",)
    token_outputs = True

    def matches(self, model: nn.Module) -> bool:
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def parts(self, model: nn.Module) -> list[Part] | None:
        """The embedding stem (patch embedding, class/register tokens, position embedding, pre-norm),
        the blocks, and the head (final norm, pooling, classifier)."""
        if not isinstance(model.blocks, nn.Sequential):
            return None

        def stem(x: Tensor) -> Tensor:
            return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

        def head(x: Tensor) -> Tensor:
            return model.forward_head(model.norm(x))

        return ([("stem", stem, ["patch_embed", "pos_drop", "patch_drop", "norm_pre"])]
                + [module_part(model, b, f"blocks.{i}") for i, b in enumerate(model.blocks)]
                + [("head", head, ["norm", "attn_pool", "fc_norm", "head_drop", "head"])])

    def build(self, spec: Spec) -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer

        unknown = sorted(set(spec) - {"family", *VIT_KEYS})
        if unknown:
            raise ValueError(f"timm.vit spec has unknown key(s) {unknown}; known: {sorted(VIT_KEYS)}")
        return VisionTransformer(**{k: spec[k] for k in VIT_KEYS if k in spec})

    def describe(self, model: nn.Module) -> Spec:
        """The spec of a VisionTransformer built from the :data:`VIT_KEYS` arguments (uniform blocks)."""
        from timm.layers import LayerScale

        blocks = list(model.blocks)
        attn, mlp_ = blocks[0].attn, blocks[0].mlp
        to_int = lambda v: int(v[0]) if isinstance(v, (tuple, list)) and len(set(v)) == 1 else v  # noqa: E731
        img, patch = model.patch_embed.img_size, model.patch_embed.patch_size
        spec = {
            "family": self.name,
            "img_size": to_int(list(img)), "patch_size": to_int(list(patch)),
            "in_chans": model.patch_embed.proj.in_channels, "num_classes": model.num_classes,
            "global_pool": model.global_pool, "embed_dim": model.embed_dim, "depth": len(blocks),
            "num_heads": attn.num_heads, "mlp_ratio": mlp_.fc1.out_features / model.embed_dim,
            "qkv_bias": attn.qkv.bias is not None, "qk_norm": not isinstance(attn.q_norm, nn.Identity),
            "init_values": 1e-5 if isinstance(blocks[0].ls1, LayerScale) else None,
            "class_token": model.cls_token is not None, "no_embed_class": bool(model.no_embed_class),
            "reg_tokens": int(model.num_reg_tokens), "pre_norm": not isinstance(model.norm_pre, nn.Identity),
            # timm: a final norm sits before pooling (``norm``) or, with ``fc_norm``, after it
            "final_norm": not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)),
            "fc_norm": not isinstance(model.fc_norm, nn.Identity),
        }
        if float(spec["mlp_ratio"]).is_integer():
            spec["mlp_ratio"] = float(int(spec["mlp_ratio"]))
        flags = ("dynamic_img_size", "pool_include_prefix", "num_prefix_tokens", "global_pool")
        if not same_tree(spec, model, flags):
            raise ValueError("describe: this VisionTransformer is not one that timm builds from "
                             f"{', '.join(VIT_KEYS)} (e.g. its blocks differ from each other, or it uses another "
                             "activation, norm layer or setting)")
        return spec
