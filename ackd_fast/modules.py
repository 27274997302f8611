"""ACKAttention, ACKFusion, ACKRefiner: the drop-in nn.Modules of ACKD (DESIGN.md section 1).

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
from ackd_fast.ops import check_backend, compute_dtype, resolve_backend

REFINER_MODES = ("attention", "fusion", "both")


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
        backend: "auto", "triton" or "reference". "auto" runs the Triton kernels on CUDA when the attention
            computes in fp16, bf16 or fp32 with a head dim of at most 128, and the reference elsewhere; "triton"
            on CPU needs TRITON_INTERPRET=1 (the interpreter, for tests).
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
        backend = resolve_backend(
            "ack_attention",
            self.backend,
            deep.device,
            compute_dtype(deep),
            head_dim=self.head_dim,
            sources=len(sources),
        )
        attention = ops.ack_attention if backend == "triton" else reference.ack_attention
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
    """The refined knowledge T*_k of one deep stage: ACK-F(ACK-A(deep, sources), sources) for mode="both",
    or either module alone ("attention", "fusion").

    `residual` is ACK-F's (the paper's ablation; ACK-A keeps its own, as ACKAttention(residual=False) would not).
    Without it ACK-F would discard the map it refines, and with it ACK-A in "both": it accumulates that map as one
    more source instead, so that ConvBlock(acc) still reads it (at most 3 sources then).

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
        **kw,
    ):
        super().__init__()
        self.mode = checks.one_of("mode", mode, REFINER_MODES)
        unknown = set(kw) - set(self._ATTENTION_KW) - set(self._FUSION_KW)
        if unknown:
            raise TypeError(
                f"ACKRefiner got unexpected keyword arguments {sorted(unknown)}; "
                f"it takes {list(self._ATTENTION_KW + self._FUSION_KW)}"
            )
        source_channels = checks.channel_list("source_channels", source_channels)
        if not residual and (mode == "attention" or len(source_channels) == checks.MAX_SOURCES):
            raise ValueError(
                "residual=False (ACK-F's residual; ACK-F then accumulates the deep map too) needs mode 'fusion' or "
                f"'both' and at most {checks.MAX_SOURCES - 1} sources, got mode={mode!r} and "
                f"{len(source_channels)} sources"
            )
        attn_kw = {k: v for k, v in kw.items() if k in self._ATTENTION_KW}
        fusion_kw = {k: v for k, v in kw.items() if k in self._FUSION_KW}
        fusion_sources = [*source_channels] if residual else [*source_channels, deep_channels]
        self.attention = (
            ACKAttention(deep_channels, source_channels, backend=backend, **attn_kw)
            if mode in ("attention", "both")
            else None
        )
        self.fusion = (
            ACKFusion(deep_channels, fusion_sources, residual=residual, backend=backend, **fusion_kw)
            if mode in ("fusion", "both")
            else None
        )

    def forward(self, deep: Tensor, sources: Sequence[Tensor]) -> Tensor:
        if self.attention is not None:
            deep = self.attention(deep, sources)
        if self.fusion is not None:
            deep = self.fusion(deep, sources if self.fusion.residual else [*sources, deep])
        return deep
