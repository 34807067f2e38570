"""Mammo-FActOR's attribute mapper (docs/upstream.md#mammo-factor; upstream-mammoclip.md section 10.2).

Every channel of the frozen image encoder's feature map ``[B, C, H, W]`` is a "region": its flattened
spatial map (``H * W`` values) goes through one small MLP per attribute (``Linear(HW, HW) -> ReLU ->
Linear(HW, D)``) into the text space, and is scored by its cosine to the attribute's text embedding.

No library has this module (it is the paper's own head), hence the hand-written code. Upstream's reshape
of the heads' outputs interleaves channels across attributes (``interleave_heads=True`` reproduces it for
``legacy: true``): with the heads' outputs stacked head after head, ``view(-1, A, D)`` gives row ``r`` the
flat entries ``r * A + a``, so attribute ``a`` is scored with channels ``a, a + A, a + 2A, ...`` of the
heads in turn, not with its own head's view of every channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttributeMapper", "image_scores", "region_similarities"]


class AttributeMapper(nn.Module):
    """One MLP per attribute from a channel's flattened ``map_size = H * W`` spatial map to ``embed_dim``.

    ``forward``: ``[B, C, H, W]`` -> normalised region embeddings ``[B, A, C, embed_dim]``.
    """

    def __init__(
        self, map_size: int, embed_dim: int, n_attributes: int, *, interleave_heads: bool = False
    ) -> None:
        super().__init__()
        if map_size < 1 or embed_dim < 1 or n_attributes < 1:
            raise ValueError(
                f"map_size, embed_dim and n_attributes must be >= 1, got {map_size}, {embed_dim}, "
                f"{n_attributes}"
            )
        self.map_size = int(map_size)
        self.embed_dim = int(embed_dim)
        self.interleave_heads = bool(interleave_heads)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(map_size, map_size), nn.ReLU(), nn.Linear(map_size, embed_dim))
            for _ in range(n_attributes)
        )

    @property
    def n_attributes(self) -> int:
        return len(self.heads)

    def forward(self, feature_map: Tensor) -> Tensor:
        b, c, h, w = feature_map.shape
        if h * w != self.map_size:
            raise ValueError(
                f"feature map of {h} x {w} = {h * w} positions; the mapper was built for {self.map_size} "
                "(input size and feature stride must match the training run)"
            )
        regions = feature_map.flatten(2)  # [B, C, HW]
        per_head = torch.stack([head(regions) for head in self.heads], dim=1)  # [B, A, C, D]
        if self.interleave_heads:
            a = self.n_attributes
            # upstream: heads stacked head after head ([A * C, D] per image), then view(-1, A, D)
            per_head = per_head.reshape(b, a * c, self.embed_dim).reshape(b, c, a, self.embed_dim)
            per_head = per_head.transpose(1, 2)
        return F.normalize(per_head, dim=-1)


def region_similarities(region_embeddings: Tensor, attribute_embeddings: Tensor) -> Tensor:
    """Cosine of every region to its attribute: ``[B, A, C, D]`` x ``[A, D]`` (both normalised) ->
    ``[B, A, C]``."""
    if region_embeddings.shape[1] != attribute_embeddings.shape[0]:
        raise ValueError(
            f"{region_embeddings.shape[1]} attribute heads but {attribute_embeddings.shape[0]} attribute "
            "embeddings"
        )
    return torch.einsum("bacd,ad->bac", region_embeddings, attribute_embeddings.to(region_embeddings))


def image_scores(similarities: Tensor, temperature: float) -> Tensor:
    """Image-level score per attribute: the best region's cosine / ``temperature`` (``[B, A, C]`` ->
    ``[B, A]``)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return similarities.amax(dim=2) / temperature
