"""A GPT-2-small style transformer in ``kiln.ops``, with NumPy and JAX versions of the same math.

Importing this module has no side effects (JAX is imported only by the ``jax_*`` builders).

- :class:`Config`: GPT-2 small by default (d_model 768, 12 heads, d_ff 3072, 12 layers, LayerNorm
  eps 1e-5, GELU with the tanh approximation).
- :func:`init_layer` / :func:`init_layers`: deterministic random float32 weights laid out as in
  GPT-2 (Q/K/V as one ``[d, 3d]`` weight and ``[3d]`` bias; weights are ``[in, out]``).
- kiln (the weights are captured as constants, like ``examples/gpt_block.py``'s ``make_block``):
  :func:`make_prefill_block` (``x [S, d] -> [S, d]``, pre-LN causal self-attention + MLP),
  :func:`make_decode_step` (one token against a KV cache: ``x [1, d], past_k [H, T, hd],
  past_v [H, T, hd] -> (y [1, d], new_k [H, T+1, hd], new_v [H, T+1, hd])``) and
  :func:`make_body` (``n_layers`` prefill blocks in sequence). Each returns a :class:`kiln.Jitted`
  (keyword options such as ``target=`` go to :func:`kiln.jit`); the undecorated function is
  its ``.fn``.
- NumPy float32 references: :func:`numpy_prefill_block`, :func:`numpy_decode_step`,
  :func:`numpy_body`.
- JAX: :func:`jax_prefill_block`, :func:`jax_decode_step`, :func:`jax_body` return ``jax.jit``
  callables with the weights already on the device (passed as arguments, not baked into the HLO).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import kiln
from kiln import ops

Weights = dict[str, np.ndarray]

#: The value masked attention scores take (finite, so that fused kernels need no inf arithmetic).
MASK_VALUE = -1e9


@dataclass(frozen=True)
class Config:
    """Transformer sizes; the defaults are GPT-2 small."""

    d_model: int = 768
    n_heads: int = 12
    d_ff: int = 3072
    n_layers: int = 12
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def scale(self) -> float:
        """The attention score scale 1/sqrt(head_dim), a Python float (keeps float32 math)."""
        return 1.0 / math.sqrt(self.head_dim)


def init_layer(cfg: Config, seed: int = 0) -> Weights:
    """Deterministic random float32 weights of one block (GPT-2's init: N(0, 0.02), residual
    projections scaled by 1/sqrt(2 n_layers)); biases and LayerNorm parameters are small random
    values rather than 0 and 1, so that a dropped bias or gain shows up in the tests."""
    rng = np.random.default_rng(seed)
    d, f = cfg.d_model, cfg.d_ff

    def w(*shape: int, std: float = 0.02) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    proj_std = 0.02 / math.sqrt(2 * cfg.n_layers)
    return {
        "ln1_w": 1 + w(d, std=0.1),
        "ln1_b": w(d),
        "w_qkv": w(d, 3 * d),
        "b_qkv": w(3 * d),
        "w_o": w(d, d, std=proj_std),
        "b_o": w(d),
        "ln2_w": 1 + w(d, std=0.1),
        "ln2_b": w(d),
        "w_fc": w(d, f),
        "b_fc": w(f),
        "w_proj": w(f, d, std=proj_std),
        "b_proj": w(d),
    }


def init_layers(cfg: Config, seed: int = 0) -> list[Weights]:
    """``cfg.n_layers`` blocks' weights, layer ``i`` from seed ``seed + i``."""
    return [init_layer(cfg, seed + i) for i in range(cfg.n_layers)]


# ----------------------------------------------------------------------------------------------
# kiln (traced with kiln.ops)


def _heads(t: Any, s: int, cfg: Config) -> Any:
    """[s, d] -> [H, s, hd]."""
    return ops.transpose(ops.reshape(t, (s, cfg.n_heads, cfg.head_dim)), (1, 0, 2))


def _merge_heads(t: Any, s: int, cfg: Config) -> Any:
    """[H, s, hd] -> [s, d]."""
    return ops.reshape(ops.transpose(t, (1, 0, 2)), (s, cfg.d_model))


def _mlp(x: Any, p: Weights, cfg: Config) -> Any:
    h = ops.layer_norm(x, p["ln2_w"], p["ln2_b"], eps=cfg.eps)
    h = ops.gelu(h @ p["w_fc"] + p["b_fc"], approximate="tanh")
    return x + h @ p["w_proj"] + p["b_proj"]


def _prefill(x: Any, p: Weights, cfg: Config) -> Any:
    s = x.shape[0]
    h = ops.layer_norm(x, p["ln1_w"], p["ln1_b"], eps=cfg.eps)
    q, k, v = ops.split(h @ p["w_qkv"] + p["b_qkv"], 3, axis=-1)
    q, k, v = (_heads(t, s, cfg) for t in (q, k, v))
    scores = (q @ ops.transpose(k, (0, 2, 1))) * cfg.scale
    scores = ops.where(np.tri(s, dtype=bool), scores, MASK_VALUE)  # causal: key j <= query i
    attn = ops.softmax(scores, axis=-1) @ v
    x = x + _merge_heads(attn, s, cfg) @ p["w_o"] + p["b_o"]
    return _mlp(x, p, cfg)


def _decode(x: Any, past_k: Any, past_v: Any, p: Weights, cfg: Config) -> tuple[Any, Any, Any]:
    h = ops.layer_norm(x, p["ln1_w"], p["ln1_b"], eps=cfg.eps)
    q, k, v = ops.split(h @ p["w_qkv"] + p["b_qkv"], 3, axis=-1)
    q, k, v = (_heads(t, 1, cfg) for t in (q, k, v))
    new_k = ops.concatenate([past_k, k], axis=1)
    new_v = ops.concatenate([past_v, v], axis=1)
    scores = (q @ ops.transpose(new_k, (0, 2, 1))) * cfg.scale  # [H, 1, T+1]: no mask needed
    attn = ops.softmax(scores, axis=-1) @ new_v
    x = x + _merge_heads(attn, 1, cfg) @ p["w_o"] + p["b_o"]
    return _mlp(x, p, cfg), new_k, new_v


def make_prefill_block(cfg: Config, weights: Weights, **jit_options: Any) -> kiln.Jitted:
    """One block, ``x [S, d] -> [S, d]``, as a kiln-jitted function (weights are constants)."""

    def prefill_block(x: Any) -> Any:
        return _prefill(x, weights, cfg)

    jitted: kiln.Jitted = kiln.jit(prefill_block, **jit_options)
    return jitted


def make_decode_step(cfg: Config, weights: Weights, **jit_options: Any) -> kiln.Jitted:
    """One token through one block with a KV cache:
    ``(x [1, d], past_k [H, T, hd], past_v [H, T, hd]) -> (y [1, d], new_k, new_v [H, T+1, hd])``."""

    def decode_step(x: Any, past_k: Any, past_v: Any) -> tuple[Any, Any, Any]:
        return _decode(x, past_k, past_v, weights, cfg)

    jitted: kiln.Jitted = kiln.jit(decode_step, **jit_options)
    return jitted


def make_body(cfg: Config, layers: Sequence[Weights], **jit_options: Any) -> kiln.Jitted:
    """``len(layers)`` prefill blocks in sequence, ``x [S, d] -> [S, d]``."""
    layers = list(layers)

    def body(x: Any) -> Any:
        for p in layers:
            x = _prefill(x, p, cfg)
        return x

    jitted: kiln.Jitted = kiln.jit(body, **jit_options)
    return jitted


def make_decode_body(cfg: Config, layers: Sequence[Weights], **jit_options: Any) -> kiln.Jitted:
    """One token through ``L = len(layers)`` blocks with per-layer KV caches:
    ``(x [1, d], past_k [L, H, T, hd], past_v [L, H, T, hd]) -> (y [1, d], new_k, new_v [L, H, T+1, hd])``."""
    layers = list(layers)
    n = len(layers)

    def decode_body(x: Any, past_k: Any, past_v: Any) -> tuple[Any, Any, Any]:
        t = past_k.shape[2]
        shape = (cfg.n_heads, t, cfg.head_dim)
        ks = (
            [ops.reshape(k, shape) for k in ops.split(past_k, n, axis=0)]
            if n > 1
            else [ops.reshape(past_k, shape)]
        )
        vs = (
            [ops.reshape(v, shape) for v in ops.split(past_v, n, axis=0)]
            if n > 1
            else [ops.reshape(past_v, shape)]
        )
        new_ks, new_vs = [], []
        for p, k, v in zip(layers, ks, vs, strict=True):
            x, nk, nv = _decode(x, k, v, p, cfg)
            new_ks.append(ops.expand_dims(nk, 0))
            new_vs.append(ops.expand_dims(nv, 0))
        return x, ops.concatenate(new_ks, axis=0), ops.concatenate(new_vs, axis=0)

    jitted: kiln.Jitted = kiln.jit(decode_body, **jit_options)
    return jitted


# ----------------------------------------------------------------------------------------------
# NumPy (float32 throughout: only Python floats and float32 arrays meet)


def _np_ln(z: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = z.mean(-1, keepdims=True)
    zc = z - mu
    var = (zc * zc).mean(-1, keepdims=True)
    return zc / np.sqrt(var + eps) * w + b


def _np_softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_mlp(x: np.ndarray, p: Weights, cfg: Config) -> np.ndarray:
    h = _np_ln(x, p["ln2_w"], p["ln2_b"], cfg.eps) @ p["w_fc"] + p["b_fc"]
    h = 0.5 * h * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * (h * h * h))))
    return x + h @ p["w_proj"] + p["b_proj"]


def numpy_prefill_block(cfg: Config, weights: Weights, x: np.ndarray) -> np.ndarray:
    """The prefill block in plain NumPy float32."""
    p, (s, d), hd = weights, x.shape, cfg.head_dim
    h = _np_ln(x, p["ln1_w"], p["ln1_b"], cfg.eps)
    q, k, v = np.split(h @ p["w_qkv"] + p["b_qkv"], 3, axis=-1)
    q, k, v = (t.reshape(s, cfg.n_heads, hd).transpose(1, 0, 2) for t in (q, k, v))
    scores = (q @ k.transpose(0, 2, 1)) * cfg.scale
    scores = np.where(np.tri(s, dtype=bool), scores, np.float32(MASK_VALUE))
    attn = _np_softmax(scores) @ v
    x = x + attn.transpose(1, 0, 2).reshape(s, d) @ p["w_o"] + p["b_o"]
    return _np_mlp(x, p, cfg)


def numpy_decode_step(
    cfg: Config, weights: Weights, x: np.ndarray, past_k: np.ndarray, past_v: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decode step in plain NumPy float32: ``(y, new_k, new_v)``."""
    p, hd = weights, cfg.head_dim
    h = _np_ln(x, p["ln1_w"], p["ln1_b"], cfg.eps)
    q, k, v = np.split(h @ p["w_qkv"] + p["b_qkv"], 3, axis=-1)
    q, k, v = (t.reshape(cfg.n_heads, 1, hd) for t in (q, k, v))  # [1, d] -> [H, 1, hd]
    new_k = np.concatenate([past_k, k], axis=1)
    new_v = np.concatenate([past_v, v], axis=1)
    scores = (q @ new_k.transpose(0, 2, 1)) * cfg.scale
    attn = _np_softmax(scores) @ new_v
    x = x + attn.reshape(1, cfg.d_model) @ p["w_o"] + p["b_o"]
    return _np_mlp(x, p, cfg), new_k, new_v


def numpy_decode_body(
    cfg: Config, layers: Sequence[Weights], x: np.ndarray, past_k: np.ndarray, past_v: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``len(layers)`` decode steps in plain NumPy float32: ``(y, new_k, new_v)`` with caches stacked."""
    new_k, new_v = [], []
    for i, p in enumerate(layers):
        x, k, v = numpy_decode_step(cfg, p, x, past_k[i], past_v[i])
        new_k.append(k)
        new_v.append(v)
    return x, np.stack(new_k), np.stack(new_v)


def numpy_body(cfg: Config, layers: Sequence[Weights], x: np.ndarray) -> np.ndarray:
    """``len(layers)`` prefill blocks in plain NumPy float32."""
    for p in layers:
        x = numpy_prefill_block(cfg, p, x)
    return x


# ----------------------------------------------------------------------------------------------
# JAX (jax.numpy, the same math; weights are jit arguments placed on the device once)


def _jax_block(cfg: Config) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(prefill(p, x), decode(p, x, past_k, past_v)) written with jax.numpy."""
    import jax.numpy as jnp

    def ln(z: Any, w: Any, b: Any) -> Any:
        mu = z.mean(-1, keepdims=True)
        zc = z - mu
        var = (zc * zc).mean(-1, keepdims=True)
        return zc / jnp.sqrt(var + cfg.eps) * w + b

    def softmax(s: Any) -> Any:
        e = jnp.exp(s - s.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def mlp(x: Any, p: Any) -> Any:
        h = ln(x, p["ln2_w"], p["ln2_b"]) @ p["w_fc"] + p["b_fc"]
        h = 0.5 * h * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * (h * h * h))))
        return x + h @ p["w_proj"] + p["b_proj"]

    def prefill(p: Any, x: Any) -> Any:
        s, hd = x.shape[0], cfg.head_dim
        h = ln(x, p["ln1_w"], p["ln1_b"])
        q, k, v = jnp.split(h @ p["w_qkv"] + p["b_qkv"], 3, axis=-1)
        q, k, v = (t.reshape(s, cfg.n_heads, hd).transpose(1, 0, 2) for t in (q, k, v))
        scores = (q @ k.transpose(0, 2, 1)) * cfg.scale
        scores = jnp.where(jnp.tri(s, dtype=bool), scores, MASK_VALUE)
        attn = softmax(scores) @ v
        x = x + attn.transpose(1, 0, 2).reshape(s, cfg.d_model) @ p["w_o"] + p["b_o"]
        return mlp(x, p)

    def decode(p: Any, x: Any, past_k: Any, past_v: Any) -> tuple[Any, Any, Any]:
        h = ln(x, p["ln1_w"], p["ln1_b"])
        q, k, v = jnp.split(h @ p["w_qkv"] + p["b_qkv"], 3, axis=-1)
        q, k, v = (t.reshape(cfg.n_heads, 1, cfg.head_dim) for t in (q, k, v))
        new_k = jnp.concatenate([past_k, k], axis=1)
        new_v = jnp.concatenate([past_v, v], axis=1)
        scores = (q @ new_k.transpose(0, 2, 1)) * cfg.scale
        attn = softmax(scores) @ new_v
        x = x + attn.reshape(1, cfg.d_model) @ p["w_o"] + p["b_o"]
        return mlp(x, p), new_k, new_v

    return prefill, decode


def jax_prefill_block(cfg: Config, weights: Weights) -> Callable[[Any], Any]:
    """A ``jax.jit``-compiled prefill block: ``f(x [S, d]) -> jax.Array [S, d]``."""
    import jax

    prefill, _ = _jax_block(cfg)
    params = jax.device_put(weights)
    fn = jax.jit(prefill)
    return lambda x: fn(params, x)


def jax_decode_step(cfg: Config, weights: Weights) -> Callable[[Any, Any, Any], Any]:
    """A ``jax.jit``-compiled decode step: ``f(x, past_k, past_v) -> (y, new_k, new_v)``."""
    import jax

    _, decode = _jax_block(cfg)
    params = jax.device_put(weights)
    fn = jax.jit(decode)
    return lambda x, past_k, past_v: fn(params, x, past_k, past_v)


def jax_body(cfg: Config, layers: Sequence[Weights]) -> Callable[[Any], Any]:
    """A ``jax.jit``-compiled stack of ``len(layers)`` prefill blocks (unrolled)."""
    import jax

    prefill, _ = _jax_block(cfg)
    params = jax.device_put(list(layers))

    def body(ps: Any, x: Any) -> Any:
        for p in ps:
            x = prefill(p, x)
        return x

    fn = jax.jit(body)
    return lambda x: fn(params, x)
