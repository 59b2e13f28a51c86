"""timm encoders behind one small interface: pooled features, dense feature maps, ``num_features``.

Any timm model name works. Weights are random unless ``checkpoint`` names an encoder exported by
``ssl-derm pretrain`` (a timm state dict in safetensors) or ``init`` names starting weights
(``encoder.init``: a local timm state dict, or ``timm`` for timm's own weights, the only case where
anything is downloaded, and only when asked; see ``encoder_init.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import timm
import torch
from torch import nn

from ssl_derm.errors import EncoderError


def weighted_pool(fmap: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) feature map, (B, 1, H, W) weights >= 0 -> (B, C) weighted mean over the cells.

    A cell's weight is the mean of ``weights`` over the pixels it covers, plus 1e-3: a cell with no
    weight at all still counts a little, so an all-zero mask gives the plain average."""
    cell = nn.functional.adaptive_avg_pool2d(weights.to(fmap.dtype), fmap.shape[-2:]) + 1e-3
    return (fmap * cell).sum(dim=(2, 3)) / cell.sum(dim=(2, 3))


def _create(name: str, **kwargs) -> nn.Module:
    """timm.create_model, passing ``img_size`` only to models whose constructor takes it (ViT, Swin...)."""
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        kwargs.pop("img_size")
        return timm.create_model(name, **kwargs)


class Encoder(nn.Module):
    """A timm backbone without classifier.

    ``forward(x)``: (B, 3, H, W) float -> (B, num_features) pooled features.
    ``forward_dense(x)``: (B, 3, H, W) -> (B, dense_dim, h, w) the last feature map (ViT tokens on their grid).
    """

    def __init__(self, model: nn.Module, name: str, img_size: int):
        super().__init__()
        self.model = model
        self.name = name
        self.img_size = img_size
        # pooled width (mobilenetv3 has a head conv after pooling, so it can differ from the map's width)
        self.num_features = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self.dense_dim = int(model.num_features)  # channels of forward_dense
        self.is_vit = hasattr(model, "num_prefix_tokens") and hasattr(model, "patch_embed")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(feats, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))

    def pooled_stages(self, x: torch.Tensor, stages: int = 1, weights: Optional[torch.Tensor] = None,
                      keep_avg: bool = False) -> torch.Tensor:
        """(B, D) frozen-probe features: ``stages=1`` is :meth:`forward`; ``stages=n`` concatenates the
        average-pooled outputs of the last n stages/blocks (timm ``forward_intermediates``), e.g. for
        resnet18 layers 2-4 (128 + 256 + 512 = 896) with n=3. Middle stages keep the colour and texture
        detail that the last stage's invariances may have discarded.

        ``weights`` (B, 1, H, W) >= 0, e.g. a lesion mask: each map (for ``stages=1`` the last feature map,
        :meth:`forward_dense`, not the model's own pooling) is pooled as a weighted mean, see
        :func:`weighted_pool`; ``keep_avg`` puts the plain features before those, from the same forward pass."""
        if stages <= 1:
            ff = self.forward_features(x)
            avg = self.pool(ff)
            if weights is None:
                return avg
            lesion = weighted_pool(self.to_dense(ff), weights)
            return torch.cat([avg, lesion], dim=1) if keep_avg else lesion
        if not hasattr(self.model, "forward_intermediates"):
            raise EncoderError(f"{self.name} has no forward_intermediates in timm: multi-stage features "
                               "(protocol.feature_stages > 1) are not available for it; set protocol.feature_stages=1")
        inter = self.model.forward_intermediates(x, indices=stages, intermediates_only=True)
        avg = torch.cat([t.mean(dim=(2, 3)) if t.ndim == 4 else t.mean(dim=1) for t in inter], dim=1)
        if weights is None:
            return avg
        if any(t.ndim != 4 for t in inter):
            raise EncoderError(f"{self.name}'s intermediate outputs are not feature maps, so they cannot be "
                               "pooled over the lesion; set protocol.feature_pool=avg or feature_stages=1")
        lesion = torch.cat([weighted_pool(t, weights) for t in inter], dim=1)
        return torch.cat([avg, lesion], dim=1) if keep_avg else lesion

    def stages_dim(self, stages: int = 1, weighted: bool = False) -> int:
        """Width of :meth:`pooled_stages` output (``weighted``: with ``weights``)."""
        if stages <= 1:
            return self.dense_dim if weighted else self.num_features
        return int(sum(f["num_chs"] for f in self.model.feature_info[-stages:]))

    def to_dense(self, feats: torch.Tensor) -> torch.Tensor:
        """Turn ``forward_features`` output into (B, C, h, w)."""
        if feats.ndim == 4:
            # Swin and some others give NHWC
            if feats.shape[-1] == self.dense_dim and feats.shape[1] != self.dense_dim:
                return feats.permute(0, 3, 1, 2).contiguous()
            return feats
        if feats.ndim == 3:  # tokens
            npt = getattr(self.model, "num_prefix_tokens", 0)
            tokens = feats[:, npt:]
            n = tokens.shape[1]
            grid = getattr(getattr(self.model, "patch_embed", None), "grid_size", None)
            h, w = (int(grid[0]), int(grid[1])) if grid is not None and grid[0] * grid[1] == n else (int(n**0.5), int(n**0.5))
            return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        raise EncoderError(f"cannot make a dense map from features of shape {tuple(feats.shape)}")

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_dense(self.forward_features(x))

    @property
    def reduction(self) -> int:
        """Input pixels per feature-map cell along one side."""
        info = getattr(self.model, "feature_info", None)
        if info:
            try:
                return int(info[-1]["reduction"])
            except (KeyError, IndexError, TypeError):
                pass
        ps = getattr(getattr(self.model, "patch_embed", None), "patch_size", None)
        return int(ps[0]) if ps is not None else 32


def create_encoder(
    name: str,
    img_size: int = 224,
    checkpoint: Optional[str] = None,
    pretrained: bool = False,
    drop_path_rate: float = 0.0,
    init: Optional[str] = None,
) -> Encoder:
    """Build a randomly initialised timm encoder, load an exported one from ``checkpoint``, or start from
    ``init`` (PATH | "timm" | "none"/None; see :mod:`ssl_derm.encoder_init`)."""
    if pretrained:
        raise EncoderError(
            "encoder.pretrained=true is not how starting weights are asked for: set encoder.init=timm (timm's own "
            "weights, online) or encoder.init=PATH (a local timm state dict), or encoder.checkpoint=PATH for an "
            "encoder exported by `ssl-derm pretrain`"
        )
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:10]
        raise EncoderError(f"encoder.name '{name}' is not a timm model; similar names: {', '.join(close) or 'none'}")
    kwargs = dict(num_classes=0, img_size=img_size)
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    init = None if init is None or str(init).lower() in ("", "none") else str(init)
    given = checkpoint and str(checkpoint).lower() != "none"
    if init and given:
        raise EncoderError(f"encoder.init '{init}' and encoder.checkpoint '{checkpoint}' are both set; set one: "
                           "checkpoint for an encoder exported by ssl-derm, init for starting weights")
    if init:
        model = _from_init(name, init, kwargs)
    elif given:
        from ssl_derm.encoder_files import check_fits, check_image_size, encoder_file

        path = encoder_file(checkpoint)

        probe = _create(name, pretrained=False, **kwargs)
        check_image_size(probe, name, img_size)
        check_fits(path, name, probe)  # timm only warns about keys that do not fit: check them first
        try:
            model = _create(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        except RuntimeError as e:
            raise EncoderError(f"encoder.checkpoint '{path}' does not fit encoder.name '{name}': {str(e)[:400]}") from None
    else:
        model = _create(name, pretrained=False, **kwargs)
        from ssl_derm.encoder_files import check_image_size

        check_image_size(model, name, img_size)
    return Encoder(model, name, img_size)


def _from_init(name: str, init: str, kwargs: dict) -> nn.Module:
    from ssl_derm import encoder_init

    if init == "timm":
        return encoder_init.create_timm_pretrained(name, _create, **kwargs)
    path = Path(init).expanduser()
    if not path.is_file():
        raise EncoderError(f"encoder.init '{init}' is not a file, 'timm' or 'none'; give a timm state dict "
                           "(.safetensors, or a torch file loadable with weights_only=True)")
    state = encoder_init.read_state_dict(path)
    state = encoder_init.check_keys(state, _create(name, pretrained=False, **kwargs), path, name)
    try:  # timm's own loading: classifier handling and a ViT's position embedding resampled to img_size
        return _create(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state, file=None), **kwargs)
    except RuntimeError as e:
        raise EncoderError(f"encoder.init '{path}' does not fit encoder.name '{name}': {str(e)[:400]}") from None


def export_encoder(encoder: Encoder, path, **about: str) -> Path:
    """Write the timm state dict as safetensors, atomically, so that plain timm can load it with
    ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path), num_classes=0)``.

    The file describes itself: its metadata holds ``timm_name`` and ``img_size`` (which ``finetune`` and
    ``segment`` read when the user sets neither) and ``about`` (e.g. the method that trained it)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.model.state_dict().items()}
    save_file(state, str(tmp), metadata={"timm_name": encoder.name, "img_size": str(encoder.img_size),
                                       **{k: str(v) for k, v in about.items()}})
    tmp.replace(path)
    return path
