"""Input checks at the public boundaries (modules and ops): one place, one wording.

Each error names the argument, what it got and what was expected: a `TypeError` for a wrong kind of thing or
dtype, a `ValueError` for a wrong shape, count, device or value.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

MAX_SOURCES = 4  # docs/DESIGN.md: 1 to 4 accumulated shallow sources


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def one_of(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def channel_list(name: str, value: object) -> list[int]:
    """A constructor's `source_channels`: 1 to MAX_SOURCES positive ints."""
    if isinstance(value, (str, bytes, Tensor)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of ints (one per source), got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_SOURCES:
        raise ValueError(f"{name} must list 1 to {MAX_SOURCES} sources, got {len(value)}")
    return [positive_int(f"{name}[{j}]", c) for j, c in enumerate(value)]


def _feature_map(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(x.shape)} ({x.dim()} dims)")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} must have a non-empty H x W map, got shape {tuple(x.shape)}")
    return x


def feature_maps(
    deep: object,
    sources: object,
    deep_channels: int | None = None,
    source_channels: Sequence[int] | None = None,
    deep_name: str = "deep",
    sources_name: str = "sources",
) -> tuple[Tensor, list[Tensor]]:
    """Checks a deep map and its sources: ranks, batch, dtype, device and, when given, channel counts."""
    deep = _feature_map(deep_name, deep)
    if isinstance(sources, Tensor) or not isinstance(sources, Sequence):
        raise TypeError(f"{sources_name} must be a list or tuple of Tensors, got {type(sources).__name__}")
    if not 1 <= len(sources) <= MAX_SOURCES:
        raise ValueError(f"{sources_name} must hold 1 to {MAX_SOURCES} feature maps, got {len(sources)}")
    if source_channels is not None and len(sources) != len(source_channels):
        raise ValueError(
            f"{sources_name} holds {len(sources)} feature maps, expected {len(source_channels)} "
            f"(source_channels={list(source_channels)})"
        )
    if deep_channels is not None and deep.shape[1] != deep_channels:
        raise ValueError(
            f"{deep_name} has {deep.shape[1]} channels (shape {tuple(deep.shape)}), expected {deep_channels}"
        )
    checked = []
    for j, a in enumerate(sources):
        name = f"{sources_name}[{j}]"
        a = _feature_map(name, a)
        if a.shape[0] != deep.shape[0]:
            raise ValueError(
                f"{name} has batch {a.shape[0]} (shape {tuple(a.shape)}), expected {deep.shape[0]} like {deep_name}"
            )
        if a.dtype != deep.dtype:
            raise TypeError(f"{name} has dtype {a.dtype}, expected {deep.dtype} like {deep_name}")
        if a.device != deep.device:
            raise ValueError(f"{name} is on {a.device}, expected {deep.device} like {deep_name}")
        if source_channels is not None and a.shape[1] != source_channels[j]:
            raise ValueError(
                f"{name} has {a.shape[1]} channels (shape {tuple(a.shape)}), expected {source_channels[j]}"
            )
        checked.append(a)
    return deep, checked


ATTENTION_DTYPES = ("float16", "bfloat16", "float32")  # what the Triton kernels compute in
MAX_HEAD_DIM = 128  # the widest tile the kernels' configs are built (and compiled ahead of time) for


def attention_inputs(
    q: object,
    keys: object,
    values: object,
    heads: object,
    dtypes: tuple[str, ...] = ATTENTION_DTYPES,
    max_head_dim: int | None = MAX_HEAD_DIM,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Checks the inputs of the attention ops: q (B, heads*d, Hq, Wq); keys[j] and values[j] (B, heads*d, H_j, W_j)
    of one shape per source; 1 to MAX_SOURCES sources; one dtype (of `dtypes`: the Triton op's fp16, bf16, fp32 by
    default) and device; no empty dimension; d <= max_head_dim (None: any)."""
    heads = positive_int("heads", heads)
    q, keys = feature_maps(q, keys, deep_name="q", sources_name="keys")
    q, values = feature_maps(q, values, deep_name="q", sources_name="values")
    if len(values) != len(keys):
        raise ValueError(f"values holds {len(values)} maps, expected one per key map ({len(keys)})")
    dtype = str(q.dtype).removeprefix("torch.")
    if dtype not in dtypes:
        raise TypeError(f"q has dtype {q.dtype}, expected one of {dtypes}")
    if 0 in q.shape:
        raise ValueError(f"q must have no empty dimension, got shape {tuple(q.shape)}")
    channels = q.shape[1]
    if channels % heads:
        raise ValueError(f"heads={heads} must divide the channels of q, got shape {tuple(q.shape)}")
    if max_head_dim is not None and channels // heads > max_head_dim:
        raise ValueError(
            f"head dim channels/heads = {channels}/{heads} = {channels // heads} must be at most {max_head_dim}"
        )
    for j, (k, v) in enumerate(zip(keys, values, strict=True)):
        if k.shape[1] != channels:
            raise ValueError(
                f"keys[{j}] has {k.shape[1]} channels (shape {tuple(k.shape)}), expected {channels} like q"
            )
        if v.shape != k.shape:
            raise ValueError(f"values[{j}] has shape {tuple(v.shape)}, expected {tuple(k.shape)} like keys[{j}]")
    return q, keys, values
