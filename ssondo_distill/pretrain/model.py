"""MATPAC / MATPAC++ pretraining model around the MATPAC++ teacher's own encoder.

    audio 16 kHz -> log-mel (MATPAC front-end) -> (B, 80, frames) -> patch tokens + sin-cos positions
    tokens -> random mask (70 %): visible -> online encoder (ViT blocks) -> z_v (B, 1 + n_keep, D)
                                  masked  -> EMA target encoder (no grad)   -> z_m (B, n_mask, D)
    predictor(z_v) -> z_hat (B, n_mask, H, D)      loss_pred = 2 - 2 cos(z_hat, z_m) (best head, MCL)
    student head(z_hat) vs EMA teacher head(z_m)   loss_cls = CE(softmax(s / t_s), softmax((t - c) / t_t))

``self.online`` IS a ``MatpacTeacher`` (ssondo_cache/teachers/matpac.py): the encoder trained here is
the module extraction runs, and ``official_state_dict`` is the official encoder-only layout its strict
loader accepts. As in the official code, patch embedding, CLS token and positions are shared by the
online and target branches; only the blocks and the final norm have an EMA copy."""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ssondo_cache.compiling import compile_in_place
from ssondo_cache.teachers.matpac import FB_KEY, WINDOW_KEY, MatpacTeacher, to_official_key
from ssondo_cache.teachers.vit import ViTEncoder
from ssondo_cache.teachers.vit_teacher import check_state_dict
from ssondo_distill.pretrain.config import PretrainConfig
from ssondo_distill.pretrain.ema import annealed, ema_update
from ssondo_distill.pretrain.masking import Mask, gather_tokens, random_mask, sincos_2d
from ssondo_distill.pretrain.predictor import Predictor
from ssondo_distill.pretrain.prototypes import (
    PrototypeHead,
    classification_loss,
    collapse_stats,
    teacher_distribution,
)


def patch_tokens(encoder: ViTEncoder, mel: torch.Tensor) -> torch.Tensor:
    """(B, F, T) normalised log-mel of one whole chunk -> (B, N, D) patch tokens with positions."""
    return encoder.patch_embed(mel.unsqueeze(1)) + encoder.pos_embed[:, 1:]


def with_cls(encoder: ViTEncoder, tokens: torch.Tensor) -> torch.Tensor:  # (B, n, D) -> (B, 1 + n, D)
    cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
    return torch.cat([cls, tokens], dim=1)


def run_blocks(blocks: nn.ModuleList, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for blk in blocks:
        x = blk(x)
    return norm(x)


def _init_official(module: nn.Module) -> None:
    """Linear: Xavier-uniform, zero bias; LayerNorm: 1 / 0 (the official ``_init_weights``)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MatpacModel(nn.Module):
    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        vit = cfg.encoder.vit()
        self.online = MatpacTeacher(vit, mode="precise", amp=False)
        enc = self.online.encoder
        heads = cfg.mcl.heads if cfg.mcl.enabled else 1
        self.predictor = Predictor(vit, cfg.predictor, heads)
        with torch.no_grad():  # the official initialisation (initialize_weights)
            enc.apply(_init_official)
            self.predictor.apply(_init_official)
            enc.pos_embed.copy_(sincos_2d(vit.embed_dim, vit.grid))  # fixed (requires_grad=False)
            w = enc.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like a Linear
            nn.init.normal_(enc.cls_token, std=0.02)
            nn.init.normal_(self.predictor.mask_token, std=0.02)
        self.student_head = PrototypeHead(vit.embed_dim, cfg.prototypes)
        # the teachers start as copies (ours: the official code draws them separately)
        self.target = nn.ModuleDict({"blocks": copy.deepcopy(enc.blocks), "norm": copy.deepcopy(enc.norm)})
        self.teacher_head = copy.deepcopy(self.student_head)
        self.target.requires_grad_(False)
        self.teacher_head.requires_grad_(False)
        self.register_buffer("center", torch.zeros(cfg.prototypes.prototypes))

    # ------------------------------------------------------------------ schedules (step = updates done)

    def teacher_temp(self, step: int) -> float:
        p = self.cfg.prototypes
        warmup = round(p.warmup_teacher_temp_epochs * self.cfg.steps_per_epoch)
        return annealed(p.warmup_teacher_temp, p.teacher_temp, step, warmup)

    def mcl_temp(self, step: int) -> float:
        return self.cfg.mcl.temperature_start * self.cfg.mcl.decay_rate**step

    def encoder_decay(self, step: int) -> float:
        return annealed(self.cfg.ema_decay, self.cfg.ema_end_decay, step, self.cfg.total_steps)

    def head_decay(self, step: int) -> float:
        p = self.cfg.prototypes
        return annealed(p.ema_decay, p.ema_end_decay, step, self.cfg.total_steps)

    # ------------------------------------------------------------------ forward

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, S) at 16 kHz -> normalised log-mel (B, 80, frames), cut or zero-padded."""
        fe, frames = self.online.frontend, self.cfg.encoder.frames
        x = fe.normalize(fe.log_mel(audio))[..., :frames]
        return F.pad(x, (0, frames - x.shape[-1]))

    def make_mask(self, batch: int, generator: torch.Generator) -> Mask:
        return random_mask(
            batch, self.cfg.encoder.vit().num_patches, self.cfg.predictor.mask_ratio, generator
        )

    def forward(
        self, mel: torch.Tensor, mask: Mask, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """mel (B, F, frames), mask (its indices on mel's device) -> (loss, detached statistics)."""
        enc = self.online.encoder
        tokens = patch_tokens(enc, mel)  # (B, N, D)
        z_v = run_blocks(enc.blocks, enc.norm, with_cls(enc, gather_tokens(tokens, mask.keep)))
        with torch.no_grad():
            z_m = run_blocks(
                self.target.blocks, self.target.norm, with_cls(enc, gather_tokens(tokens, mask.masked))
            )
            z_m = z_m[:, 1:]  # (B, n_mask, D)
        z_hat = self.predictor(z_v, mask)  # (B, n_mask, H, D)
        loss_pred, best = self._prediction_loss(z_hat, z_m, step)
        z_best = torch.gather(z_hat, 2, best[..., None, None].expand(-1, -1, 1, z_hat.shape[-1])).squeeze(2)
        with torch.no_grad():
            teacher_logits = self.teacher_head(z_m).float()  # (B, n_mask, K)
            q = teacher_distribution(teacher_logits, self.center, self.teacher_temp(step))
        loss_cls = classification_loss(self.student_head(z_best), q, self.cfg.prototypes.student_temp)
        if self.training:
            self._update_center(teacher_logits if self.cfg.prototypes.center_logits else q)
        loss = self.cfg.loss_weight_pred * loss_pred + self.cfg.loss_weight_cls * loss_cls
        stats = {"loss_pred": loss_pred.detach(), "loss_cls": loss_cls.detach(), **collapse_stats(q, z_m)}
        return loss, stats

    def _prediction_loss(
        self, z_hat: torch.Tensor, z_m: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per token and head 2 - 2 cos (B, n_mask, H); with several heads each token's loss goes to
        its best head (softly while the MCL temperature is above its end value). -> (loss, best (B, n_mask))."""
        per = 2 - 2 * (
            F.normalize(z_hat.float(), dim=-1) * F.normalize(z_m.float(), dim=-1).unsqueeze(2)
        ).sum(-1)
        best = per.detach().argmin(-1)
        if per.shape[-1] == 1:
            return per.mean(), best
        temp = self.mcl_temp(step)
        if temp > self.cfg.mcl.temperature_end:
            weights = torch.softmax(-per.detach() / temp, dim=-1)
            return (weights * per).sum(-1).mean(), best
        return per.min(-1).values.mean(), best

    @torch.no_grad()
    def _update_center(self, values: torch.Tensor) -> None:
        """center <- m center + (1 - m) mean over every rank's tokens of ``values`` (..., K)."""
        flat = values.reshape(-1, values.shape[-1]).float()
        total = torch.cat([flat.sum(0), flat.new_tensor([flat.shape[0]])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        m = self.cfg.prototypes.center_momentum
        self.center.mul_(m).add_(total[:-1] / total[-1], alpha=1 - m)

    @torch.no_grad()
    def momentum_update(self, step: int) -> None:
        """EMA of the target encoder and teacher head after optimisation step ``step`` (updates done)."""
        enc = self.online.encoder
        ema_update(self.target.blocks, enc.blocks, self.encoder_decay(step))
        ema_update(self.target.norm, enc.norm, self.encoder_decay(step))
        ema_update(self.teacher_head, self.student_head, self.head_decay(step))

    def compile_blocks(self) -> None:
        """torch.compile every transformer block in place (static token counts: the mask ratio fixes
        them; state_dict keys unchanged, the step-dependent schedules stay in Python)."""
        for blocks in (self.online.encoder.blocks, self.target.blocks, self.predictor.blocks):
            for blk in blocks:
                compile_in_place(blk)

    # ------------------------------------------------------------------ the encoder it makes

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The online encoder in the official MATPAC++ encoder-only layout (``cls_token``, ``pos_embed``,
        ``patch_embed.proj.*``, ``student_encoder.blocks.*``, ``student_encoder.norm.*`` and the two
        torchaudio front-end buffers), checked against the teacher's strict layout."""
        fe = self.online.frontend
        state = {
            to_official_key(k): v.detach().cpu().clone() for k, v in self.online.encoder.state_dict().items()
        }
        state[WINDOW_KEY] = fe.window.detach().cpu().clone()
        state[FB_KEY] = fe.banks.T.detach().cpu().contiguous()
        check_state_dict(self.online.official_layout(), state, what="the pretrained encoder")
        return state


def describe_sizes(model: MatpacModel) -> dict[str, int]:
    """Parameter counts of the parts that learn (the EMA copies are not counted)."""

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    return {
        "encoder": count(model.online.encoder),
        "predictor": count(model.predictor),
        "head": count(model.student_head),
        "prototypes": model.cfg.prototypes.prototypes,
        "log_k": round(math.log(model.cfg.prototypes.prototypes), 4),
    }
