"""A GPT-style transformer block (pre-LN causal self-attention + GELU MLP) traced with @kiln.jit.

Run: ``python examples/gpt_block.py [--d 768 --heads 12 --seq 128]``. It prints the traced IR
(with --show), checks the kiln result against a plain NumPy implementation, and times both.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

import kiln
from kiln import ops


def init_weights(d: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    return {
        "ln1_w": (1 + w(d)).astype(np.float32),
        "ln1_b": w(d),
        "w_qkv": w(d, 3 * d),
        "b_qkv": w(3 * d),
        "w_o": w(d, d),
        "b_o": w(d),
        "ln2_w": (1 + w(d)).astype(np.float32),
        "ln2_b": w(d),
        "w_fc": w(d, 4 * d),
        "b_fc": w(4 * d),
        "w_proj": w(4 * d, d),
        "b_proj": w(d),
    }


def make_block(p: dict[str, np.ndarray], heads: int) -> Any:
    """The block as a kiln-traced function; the weights in ``p`` become constants."""

    @kiln.jit
    def block(x: Any) -> Any:
        s, d = x.shape
        hd = d // heads
        h = ops.layer_norm(x, p["ln1_w"], p["ln1_b"], eps=1e-5)
        qkv = h @ p["w_qkv"] + p["b_qkv"]
        q, k, v = ops.split(qkv, 3, axis=-1)
        q = ops.transpose(ops.reshape(q, (s, heads, hd)), (1, 0, 2))
        k = ops.transpose(ops.reshape(k, (s, heads, hd)), (1, 0, 2))
        v = ops.transpose(ops.reshape(v, (s, heads, hd)), (1, 0, 2))
        scores = (q @ ops.transpose(k, (0, 2, 1))) * (1.0 / math.sqrt(hd))
        causal = ops.tril(np.ones((s, s), dtype=np.float32)) > 0
        scores = ops.where(causal, scores, -1e9)
        attn = ops.softmax(scores, axis=-1) @ v
        attn = ops.reshape(ops.transpose(attn, (1, 0, 2)), (s, d))
        x = x + attn @ p["w_o"] + p["b_o"]
        h = ops.layer_norm(x, p["ln2_w"], p["ln2_b"], eps=1e-5)
        h = ops.gelu(h @ p["w_fc"] + p["b_fc"], approximate="tanh")
        return x + h @ p["w_proj"] + p["b_proj"]

    return block


def numpy_block(x: np.ndarray, p: dict[str, np.ndarray], heads: int) -> np.ndarray:
    """The same block in plain NumPy: the independent truth."""

    def ln(z: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        mu = z.mean(-1, keepdims=True)
        var = ((z - mu) ** 2).mean(-1, keepdims=True)
        return (z - mu) / np.sqrt(var + 1e-5) * w + b

    s, d = x.shape
    hd = d // heads
    h = ln(x, p["ln1_w"], p["ln1_b"])
    q, k, v = np.split(h @ p["w_qkv"] + p["b_qkv"], 3, axis=-1)
    q, k, v = (t.reshape(s, heads, hd).transpose(1, 0, 2) for t in (q, k, v))
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd)  # Python floats keep float32
    scores = np.where(np.tril(np.ones((s, s))) > 0, scores, -1e9)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    attn = (scores / scores.sum(-1, keepdims=True)) @ v
    x = x + attn.transpose(1, 0, 2).reshape(s, d) @ p["w_o"] + p["b_o"]
    h = ln(x, p["ln2_w"], p["ln2_b"]) @ p["w_fc"] + p["b_fc"]
    h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * (h * h * h))))
    return (x + h @ p["w_proj"] + p["b_proj"]).astype(np.float32)


def median_ms(fn: Any, *args: Any, repeat: int = 10) -> float:
    fn(*args)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--show", action="store_true", help="print the traced IR")
    args = ap.parse_args()

    p = init_weights(args.d)
    block = make_block(p, args.heads)
    x = np.random.default_rng(1).standard_normal((args.seq, args.d)).astype(np.float32)
    lowered = block.lower(x)
    if args.show:
        print(lowered.as_text())
    got = block(x)
    want = numpy_block(x, p, args.heads)
    err = float(np.max(np.abs(got - want)))
    print(f"GPT block d={args.d} heads={args.heads} seq={args.seq}: {len(lowered.graph.nodes)} IR nodes")
    print(f"max |kiln - numpy| = {err:.2e}")
    assert err < 1e-4, "kiln's result differs from NumPy"
    print(
        f"kiln reference: {median_ms(block, x):.2f} ms   numpy: {median_ms(numpy_block, x, p, args.heads):.2f} ms"
    )


if __name__ == "__main__":
    main()
