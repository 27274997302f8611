"""ACKAttention, ACKFusion, ACKRefiner: the drop-in nn.Modules of ACKD (docs/DESIGN.md section 1).

Each takes the teacher's deep-stage map `deep` (B, C, H, W) and its shallow `sources` (1 to 4 maps
(B, C_j, H_j, W_j) of any channels and resolution) and returns a refined map of the shape of `deep`.
The composition is the reference spec's (`ackd_fast.reference.*_block`); `backend` picks who computes its
primitive ops ("auto": the fastest that can run them; `ackd_fast.backends()` tells which). Backends are picked for
the dtype the ops compute in, which under torch.autocast is autocast's, not the input's (`ops.compute_dtype`); under
autocast each op follows its registered rule (ackd_fast/ops), so a module gives what the reference composition gives
under the same autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ackd_fast import checks, ops, reference
from ackd_fast.models.base import INIT_GAIN, init_weights
from ackd_fast.ops import check_backend, compute_dtype, resolve_backend

REFINER_MODES = ("attention", "fusion", "both")
COMPOSITIONS = ("parallel", "chained")  # how mode="both" composes ACK-A and ACK-F (ACKRefiner)
REFINER_INITS = ("default", "identity", "normal")  # how a refiner starts (ACKRefiner)


def _projection(conv: nn.Conv2d | None) -> reference.Projection | None:
    return None if conv is None else (conv.weight, conv.bias)


class ACKAttention(nn.Module):
    """ACK-A: cross-attention with queries from `deep` and keys/values from all `sources` under one softmax.

    Args:
        deep_channels: channels C of the deep map (and of the output).
        source_channels: channels C_j of each source, 1 to 4 entries.
        heads: attention heads h.
        head_dim: width d of a head; defaults to deep_channels // heads (which must then divide).
        kv_stride: average-pool stride applied to the sources before the key/value projections.
        residual: return deep + attention (True) or the attention branch alone.
        backend: "auto", "triton", "sdpa" or "reference". "auto" runs the Triton kernels on CUDA (sm_80 and later)
            when the attention computes in fp16, bf16 or fp32 with a head dim of at most 128, and PyTorch's fused
            scaled_dot_product_attention ("sdpa", memory linear in the tokens) elsewhere; "reference" is the
            materialising composition of the spec (tests); "triton" on CPU needs TRITON_INTERPRET=1.
    """

    def __init__(
        self,
        deep_channels: int,
        source_channels: Sequence[int],
        heads: int = 4,
        head_dim: int | None = None,
        kv_stride: int = 1,
        residual: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        self.deep_channels = checks.positive_int("deep_channels", deep_channels)
        self.source_channels = checks.channel_list("source_channels", source_channels)
        self.heads = checks.positive_int("heads", heads)
        if head_dim is None:
            if deep_channels % heads:
                raise ValueError(f"heads={heads} must divide deep_channels={deep_channels} when head_dim is not given")
            head_dim = deep_channels // heads
        self.head_dim = checks.positive_int("head_dim", head_dim)
        self.kv_stride = checks.positive_int("kv_stride", kv_stride)
        self.residual = bool(residual)
        self.backend = check_backend("ack_attention", backend)
        inner = self.heads * self.head_dim
        self.to_q = nn.Conv2d(deep_channels, inner, 1)
        self.to_k = nn.ModuleList(nn.Conv2d(c, inner, 1) for c in self.source_channels)
        self.to_v = nn.ModuleList(nn.Conv2d(c, inner, 1) for c in self.source_channels)
        self.to_out = nn.Conv2d(inner, deep_channels, 1)

    def forward(self, deep: Tensor, sources: Sequence[Tensor]) -> Tensor:
        deep, sources = checks.feature_maps(deep, sources, self.deep_channels, self.source_channels)
        measured = {}
        if deep.device.type == "cuda":  # the size class "auto" looks up in the committed GPU measurements
            s = self.kv_stride  # key tokens after pool_tokens (ceil mode)
            kv_tokens = sum(-(-a.shape[2] // s) * -(-a.shape[3] // s) for a in sources)
            shape = (deep.shape[2] * deep.shape[3], kv_tokens, deep.shape[0] * self.heads)
            measured = {"shape": shape, "training": torch.is_grad_enabled()}
        backend = resolve_backend(
            "ack_attention",
            self.backend,
            deep.device,
            compute_dtype(deep),
            head_dim=self.head_dim,
            sources=len(sources),
            **measured,
        )
        attention = {"triton": ops.ack_attention, "sdpa": ops.sdpa_attention}.get(backend, reference.ack_attention)
        return reference.ack_attention_block(
            deep,
            sources,
            q_proj=_projection(self.to_q),
            k_projs=[_projection(c) for c in self.to_k],
            v_projs=[_projection(c) for c in self.to_v],
            out_proj=_projection(self.to_out),
            heads=self.heads,
            kv_stride=self.kv_stride,
            residual=self.residual,
            attention=attention,
        )

    def attention_probs(self, deep: Tensor, sources: Sequence[Tensor]) -> tuple[Tensor, list[int]]:
        """The attention matrix itself, for diagnostics (it is N_q x N_kv per head: small maps only): probabilities
        (B, heads, N_q, N_kv) over the keys of all sources in order, and each source's key count."""
        deep, sources = checks.feature_maps(deep, sources, self.deep_channels, self.source_channels)
        pooled = [reference.pool_tokens(a, self.kv_stride) for a in sources]
        q = reference.conv1x1(deep, _projection(self.to_q))
        keys = [reference.conv1x1(a, _projection(c)) for a, c in zip(pooled, self.to_k, strict=True)]
        return reference.attention_probs(q, keys, self.heads), [k.shape[-2] * k.shape[-1] for k in keys]

    def extra_repr(self) -> str:
        return (
            f"deep_channels={self.deep_channels}, source_channels={self.source_channels}, heads={self.heads}, "
            f"head_dim={self.head_dim}, kv_stride={self.kv_stride}, residual={self.residual}, "
            f"backend={self.backend!r}"
        )


class ACKFusion(nn.Module):
    """ACK-F: deep + ConvBlock(sum_j w_j * align_j(resize(A_j))), ConvBlock = conv3x3 -> IN -> ReLU -> conv3x3 -> IN.

    Args:
        deep_channels: channels C of the deep map (and of the output).
        source_channels: channels C_j of each source, 1 to 4 entries; a source with C_j != C gets a 1x1 align conv.
        residual: return deep + ConvBlock(acc) (True) or ConvBlock(acc) alone.
        resize: how sources reach the deep map's size: "bilinear", "nearest" or "area".
        eps: instance-norm epsilon.
        backend: "auto", "extension" (the fused C++/CUDA ops of ackd_fast._C) or "reference".

    The accumulation weights w_j are learnable and start at 1/k; the instance norms are affine (start at 1, 0);
    the 3x3 convolutions have no bias, since the instance norm that follows removes it.
    """

    def __init__(
        self,
        deep_channels: int,
        source_channels: Sequence[int],
        residual: bool = True,
        resize: str = "bilinear",
        eps: float = 1e-5,
        backend: str = "auto",
    ):
        super().__init__()
        self.deep_channels = checks.positive_int("deep_channels", deep_channels)
        self.source_channels = checks.channel_list("source_channels", source_channels)
        self.residual = bool(residual)
        self.resize = checks.one_of("resize", resize, reference.RESIZE_MODES)
        self.eps = float(eps)
        self.backend = check_backend("ack_fusion", backend)
        c, k = deep_channels, len(self.source_channels)
        self.align = nn.ModuleList(nn.Conv2d(cj, c, 1) if cj != c else nn.Identity() for cj in self.source_channels)
        self.weights = nn.Parameter(torch.full((k,), 1.0 / k))
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm1_weight = nn.Parameter(torch.ones(c))
        self.norm1_bias = nn.Parameter(torch.zeros(c))
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm2_weight = nn.Parameter(torch.ones(c))
        self.norm2_bias = nn.Parameter(torch.zeros(c))

    def forward(self, deep: Tensor, sources: Sequence[Tensor]) -> Tensor:
        deep, sources = checks.feature_maps(deep, sources, self.deep_channels, self.source_channels)
        backend = resolve_backend("ack_fusion", self.backend, deep.device, compute_dtype(deep), sources=len(sources))
        fused = backend == "extension"
        return reference.ack_fusion_block(
            deep,
            sources,
            align_projs=[_projection(a) if isinstance(a, nn.Conv2d) else None for a in self.align],
            weights=self.weights,
            conv1_weight=self.conv1.weight,
            norm1=(self.norm1_weight, self.norm1_bias),
            conv2_weight=self.conv2.weight,
            norm2=(self.norm2_weight, self.norm2_bias),
            residual=self.residual,
            mode=self.resize,
            eps=self.eps,
            accumulate=ops.ack_accumulate if fused else reference.ack_accumulate,
            norm_act=ops.instance_norm_act_residual if fused else reference.instance_norm_act_residual,
        )

    def extra_repr(self) -> str:
        return (
            f"deep_channels={self.deep_channels}, source_channels={self.source_channels}, "
            f"residual={self.residual}, resize={self.resize!r}, backend={self.backend!r}"
        )


class ACKRefiner(nn.Module):
    """The refined knowledge T*_k of one deep stage F_k = `deep` from its sources S_k (docs/DESIGN.md section 1).

    mode="both" composes ACK-A and ACK-F as `composition` says:
        "parallel" (default): T*_k = ACK-A(F_k, S_k) + ConvBlock(acc(S_k)), ACK-A with its own residual
            (F_k + Wo O), i.e. ACK-F(ACK-A(deep, sources), sources).
        "chained": T*_k = F_k + ConvBlock(Wo O), the supplement's reading: ACK-A's branch (the correlation of the
            deep-stage and the accumulated knowledge) is what ACK-F's conv block turns into the complement of F_k.
    mode="attention" or "fusion" runs that module alone (composition does not apply).

    `residual` is ACK-F's deep-stage residual, the `F_k +` of the formulas (the paper's ablation "w/o ACK-F
    residual"). Chained without it: T*_k = ConvBlock(Wo O). Parallel without it: ACK-F would discard the map it
    refines, so it accumulates ACK-A's output as one more source instead (at most 3 sources then), ACK-A keeping
    its own residual.

    `init` is how the refiner starts (REFINER_INITS): "default", PyTorch's per-layer init; "identity", the layers
    that end each residual branch zeroed (ACK-A's output projection, ACK-F's last norm scale and shift), so
    T*_k == F_k exactly at step 0 wherever the deep residual is kept; "normal", GAN Compression's normal(0, 0.02)
    convolutions with norm scales ~ normal(1, 0.02).

    Keyword arguments go to the module that takes them: heads, head_dim, kv_stride to ACKAttention;
    resize, eps to ACKFusion; backend to both.
    """

    _ATTENTION_KW = ("heads", "head_dim", "kv_stride")
    _FUSION_KW = ("resize", "eps")

    def __init__(
        self,
        deep_channels: int,
        source_channels: Sequence[int],
        mode: str = "both",
        residual: bool = True,
        backend: str = "auto",
        composition: str = "parallel",
        init: str = "default",
        **kw,
    ):
        super().__init__()
        self.mode = checks.one_of("mode", mode, REFINER_MODES)
        self.composition = checks.one_of("composition", composition, COMPOSITIONS)
        self.residual = bool(residual)
        init = checks.one_of("init", init, REFINER_INITS)
        unknown = set(kw) - set(self._ATTENTION_KW) - set(self._FUSION_KW)
        if unknown:
            raise TypeError(
                f"ACKRefiner got unexpected keyword arguments {sorted(unknown)}; "
                f"it takes {list(self._ATTENTION_KW + self._FUSION_KW)}"
            )
        source_channels = checks.channel_list("source_channels", source_channels)
        self.chained = mode == "both" and composition == "chained"
        if not residual and not self.chained and (mode == "attention" or len(source_channels) == checks.MAX_SOURCES):
            raise ValueError(
                "residual=False (ACK-F's residual; ACK-F then accumulates the deep map too) needs mode 'fusion' or "
                f"'both' and at most {checks.MAX_SOURCES - 1} sources, got mode={mode!r} and "
                f"{len(source_channels)} sources"
            )
        attn_kw = {k: v for k, v in kw.items() if k in self._ATTENTION_KW}
        fusion_kw = {k: v for k, v in kw.items() if k in self._FUSION_KW}
        if self.chained:  # ConvBlock reads ACK-A's branch alone
            fusion_sources = [deep_channels]
        else:
            fusion_sources = [*source_channels] if residual else [*source_channels, deep_channels]
        self.attention = (
            ACKAttention(deep_channels, source_channels, residual=not self.chained, backend=backend, **attn_kw)
            if mode in ("attention", "both")
            else None
        )
        self.fusion = (
            ACKFusion(deep_channels, fusion_sources, residual=residual, backend=backend, **fusion_kw)
            if mode in ("fusion", "both")
            else None
        )
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "default") -> None:
        """Re-initialises the refiner as `init` says (class docstring); "default" leaves the layers as built."""
        init = checks.one_of("init", init, REFINER_INITS)
        if init == "normal":
            init_weights(self, "normal")  # the convolutions, as every generator's
            if self.fusion is not None:
                for w, b in ((self.fusion.norm1_weight, self.fusion.norm1_bias),
                             (self.fusion.norm2_weight, self.fusion.norm2_bias)):  # fmt: skip
                    nn.init.normal_(w, 1.0, INIT_GAIN)
                    nn.init.zeros_(b)
        elif init == "identity":
            # Zero the last layer of each residual branch: ACK-A's output (unless ConvBlock follows it, whose
            # zeroed last norm already silences the branch) and ACK-F's last norm.
            if self.attention is not None and not self.chained:
                nn.init.zeros_(self.attention.to_out.weight)
                nn.init.zeros_(self.attention.to_out.bias)
            if self.fusion is not None:
                nn.init.zeros_(self.fusion.norm2_weight)
                nn.init.zeros_(self.fusion.norm2_bias)

    def forward(self, deep: Tensor, sources: Sequence[Tensor]) -> Tensor:
        if self.chained:
            return self.fusion(deep, [self.attention(deep, sources)])
        if self.attention is not None:
            deep = self.attention(deep, sources)
        if self.fusion is not None:
            deep = self.fusion(deep, sources if self.fusion.residual else [*sources, deep])
        return deep

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, composition={self.composition!r}, residual={self.residual}"
