"""kiln's jax target against the same GPT-2-small block written by hand in jax.numpy (jax.jit).

Run: ``python benchmarks/jax_block.py [--threads 2] [--seconds 2] [--show-hlo]``.

Workloads (float32, batch 1):
- prefill: ``examples/gpt_block.py`` (``init_weights(768)``, ``make_block(p, 12)``) on x [128, 768];
  the hand-written version is :func:`hand_block` below, jitted with the weights as device arguments.
- decode: ``examples/transformer.py``'s ``make_decode_step`` (one token, KV cache 128) against that
  module's hand-written ``jax_decode_step``.

Both sides return NumPy arrays (kiln's executables do; the hand-written call is followed by
``np.asarray``), so both pay the device-to-host copy. Timing: warm-up, then N calls of each,
alternating call by call (so that drift and other load on a shared machine hit both alike), and the
median of each; the ratio is kiln / hand-written.
With ``--show-hlo`` the script prints how many StableHLO ops each program has, per op name.
"""

from __future__ import annotations

import argparse
import os
import sys


def set_thread_env(n: int) -> None:
    """XLA's CPU thread pool size; must run before jax is imported."""
    os.environ["XLA_FLAGS"] = " ".join(
        [
            *os.environ.get("XLA_FLAGS", "").split(),
            f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}",
        ]
    )


if __name__ == "__main__":
    _p = argparse.ArgumentParser(add_help=False)
    _p.add_argument("--threads", type=int, default=2)
    set_thread_env(_p.parse_known_args(sys.argv[1:])[0].threads)

import collections  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"kiln_example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def hand_block(heads: int) -> Callable[..., Any]:
    """examples/gpt_block.py's block, plainly in jax.numpy: ``f(p, x)``."""
    import jax.numpy as jnp

    def ln(z: Any, w: Any, b: Any) -> Any:
        mu = z.mean(-1, keepdims=True)
        var = ((z - mu) ** 2).mean(-1, keepdims=True)
        return (z - mu) / jnp.sqrt(var + 1e-5) * w + b

    def block(p: dict[str, Any], x: Any) -> Any:
        s, d = x.shape
        hd = d // heads
        h = ln(x, p["ln1_w"], p["ln1_b"])
        q, k, v = jnp.split(h @ p["w_qkv"] + p["b_qkv"], 3, axis=-1)
        q, k, v = (t.reshape(s, heads, hd).transpose(1, 0, 2) for t in (q, k, v))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        scores = jnp.where(jnp.tri(s, dtype=bool), scores, -1e9)
        e = jnp.exp(scores - scores.max(-1, keepdims=True))
        attn = (e / e.sum(-1, keepdims=True)) @ v
        x = x + attn.transpose(1, 0, 2).reshape(s, d) @ p["w_o"] + p["b_o"]
        h = ln(x, p["ln2_w"], p["ln2_b"]) @ p["w_fc"] + p["b_fc"]
        h = 0.5 * h * (1 + jnp.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * (h * h * h))))
        return x + h @ p["w_proj"] + p["b_proj"]

    return block


def as_tuple(out: Any) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(o) for o in (out if isinstance(out, tuple | list) else (out,)))


def timed(call: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def compare(title: str, kiln_call: Callable[[], Any], hand_call: Callable[[], Any], seconds: float) -> float:
    """Check the two agree, time them alternately, print the medians; returns the ratio."""
    got, want = as_tuple(kiln_call()), as_tuple(hand_call())
    err = max(float(np.max(np.abs(g.astype(np.float64) - w))) for g, w in zip(got, want, strict=True))
    assert err < 1e-3, f"{title}: kiln and hand-written jax differ by {err:.3g}"
    for _ in range(5):
        kiln_call(), hand_call()
    t0 = time.perf_counter()
    kiln_call()
    n = max(20, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    k_times: list[float] = []
    h_times: list[float] = []
    for i in range(n):  # alternate call by call (and who goes first): drift and load hit both alike
        if i % 2:
            k_times += timed(kiln_call, 1)
            h_times += timed(hand_call, 1)
        else:
            h_times += timed(hand_call, 1)
            k_times += timed(kiln_call, 1)
    k, h = float(np.median(k_times)), float(np.median(h_times))
    k10, h10 = float(np.percentile(k_times, 10)), float(np.percentile(h_times, 10))
    print(f"{title}: kiln jax {k:.3f} ms, hand-written jax {h:.3f} ms, ratio {k / h:.3f}x (medians)\n"
          f"    p10 {k10:.3f} / {h10:.3f} ms ({k10 / h10:.3f}x), min {min(k_times):.3f} / {min(h_times):.3f} ms; "
          f"max |diff| {err:.1e}; {len(k_times)} calls each")  # fmt: skip
    return k / h


def hlo_ops(text: str) -> collections.Counter[str]:
    return collections.Counter(re.findall(r"= (?:\"?)(stablehlo\.[a-z_]+)", text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0, help="timing budget per system and workload")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--show-hlo", action="store_true")
    args = ap.parse_args()

    import jax

    from kiln.backends.jax import JaxBackend

    JaxBackend()  # jax_enable_x64 for both sides, as kiln's jax target runs
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.threads} threads")
    rng = np.random.default_rng(0)

    gb = load_example("gpt_block")
    p = gb.init_weights(768)
    x = rng.standard_normal((args.seq, 768)).astype(np.float32)
    compiled = gb.make_block(p, 12).lower(x).compile(target="jax")
    hand = jax.jit(hand_block(12))
    params = jax.device_put(p)
    compare(
        f"GPT-2 block prefill, seq {args.seq}",
        lambda: compiled(x),
        lambda: np.asarray(hand(params, x)),
        args.seconds,
    )
    if args.show_hlo:
        ours = JaxBackend().stablehlo(compiled.graph, {})
        theirs = hand.lower(params, x).as_text()
        print("StableHLO ops (kiln / hand-written):")
        a, b = hlo_ops(ours), hlo_ops(theirs)
        for op in sorted(set(a) | set(b)):
            print(f"  {op:32s} {a[op]:4d} {b[op]:4d}")

    tr = load_example("transformer")
    cfg = tr.Config()
    w = tr.init_layer(cfg, 0)
    xd = rng.standard_normal((1, cfg.d_model), dtype=np.float32)
    kv = (cfg.n_heads, args.seq, cfg.head_dim)
    pk, pv = rng.standard_normal(kv, dtype=np.float32), rng.standard_normal(kv, dtype=np.float32)
    step = tr.make_decode_step(cfg, w).lower(xd, pk, pv).compile(target="jax")
    hand_step = tr.jax_decode_step(cfg, w)
    compare(
        f"GPT-2 decode step, KV cache {args.seq}",
        lambda: step(xd, pk, pv),
        lambda: as_tuple(hand_step(xd, pk, pv)),
        args.seconds,
    )


if __name__ == "__main__":
    main()
