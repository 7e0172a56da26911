"""The fused attention kernel: one pass over K/V blocks with an online softmax.

For each (batch*head, block of 16 queries) task: scores for a block of 64 keys are accumulated as
``S[a, b] += q[a, d] * kT[d, b]`` (K transposed into a small block, so the inner loop runs over keys
and vectorises), the running max and sum are rescaled once per block, and ``P @ V`` accumulates into
the output rows. No Sq x Sk matrix exists; the scratch per task is a 16x64 score tile, a 64xD key
tile and a 16xDv accumulator. Causal masking skips whole key blocks past the diagonal. A single
query (decoding) takes a direct path: scores as a matrix-vector product over K's rows (no
transposed tile), one softmax, then ``p @ V``. (With one query, causal masking allows every key:
the query is the last position.)
"""

from __future__ import annotations

import inspect

import numpy as np
from numba import prange

from .mathlib import fexp

BQ = 16
BK = 64


def attention_source(name: str) -> str:
    """The kernel module source (parallel and serial variants of ``name``)."""
    from .codegen import render_variants

    text = inspect.getsource(_attention).replace("def _attention(", f"def {name}(", 1)
    text = text.replace("BQ", str(BQ)).replace("BK", str(BK))
    text = text.replace("  # type: ignore[no-untyped-def]", "")
    return render_variants(text, name)


_ = (np, prange, fexp)  # the template's globals, named for linters; the module imports its own


def _attention(q, k, v, bias, out, scale, causal):  # type: ignore[no-untyped-def]
    n_batch, sq, d = q.shape
    sk = k.shape[1]
    dv = v.shape[2]
    nqb = (sq + BQ - 1) // BQ
    neg_inf = np.float32(-np.inf)
    if sq == 1:  # decoding: one query per head, so scores are a matrix-vector product over K's rows
        for n in prange(n_batch):
            sc = np.empty(sk, np.float32)
            qs = np.empty(d, np.float32)
            o = np.empty(dv, np.float32)  # a local accumulator: no aliasing with v, so it vectorises
            for e in range(d):
                qs[e] = q[n, 0, e] * scale
            # four keys per pass: four independent sums instead of one reduction per key
            b = 0
            while b + 4 <= sk:
                x0 = np.float32(0.0)
                x1 = np.float32(0.0)
                x2 = np.float32(0.0)
                x3 = np.float32(0.0)
                for e in range(d):
                    qe = qs[e]
                    x0 += qe * k[n, b, e]
                    x1 += qe * k[n, b + 1, e]
                    x2 += qe * k[n, b + 2, e]
                    x3 += qe * k[n, b + 3, e]
                sc[b] = x0
                sc[b + 1] = x1
                sc[b + 2] = x2
                sc[b + 3] = x3
                b += 4
            while b < sk:
                x = np.float32(0.0)
                for e in range(d):
                    x += qs[e] * k[n, b, e]
                sc[b] = x
                b += 1
            mx = neg_inf
            for b in range(sk):
                x = sc[b] + bias[n, 0, b]
                sc[b] = x
                mx = max(mx, x)
            total = np.float32(0.0)
            for b in range(sk):
                p = fexp(sc[b] - mx)
                sc[b] = p
                total += p
            for e in range(dv):
                o[e] = np.float32(0.0)
            # eight keys per update of o: one update per key would chain every key through o's
            # loads and stores, latency-bound
            b = 0
            while b + 8 <= sk:
                p0, p1, p2, p3 = sc[b], sc[b + 1], sc[b + 2], sc[b + 3]
                p4, p5, p6, p7 = sc[b + 4], sc[b + 5], sc[b + 6], sc[b + 7]
                for e in range(dv):
                    o[e] += (
                        p0 * v[n, b, e] + p1 * v[n, b + 1, e] + p2 * v[n, b + 2, e] + p3 * v[n, b + 3, e]
                    ) + (
                        p4 * v[n, b + 4, e] + p5 * v[n, b + 5, e] + p6 * v[n, b + 6, e] + p7 * v[n, b + 7, e]
                    )
                b += 8
            while b < sk:
                p0 = sc[b]
                for e in range(dv):
                    o[e] += p0 * v[n, b, e]
                b += 1
            inv = np.float32(1.0) / total
            for e in range(dv):
                out[n, 0, e] = o[e] * inv
        return
    for task in prange(n_batch * nqb):
        n = task // nqb
        q0 = (task % nqb) * BQ
        nq = min(BQ, sq - q0)
        m = np.full(BQ, neg_inf, np.float32)
        ell = np.zeros(BQ, np.float32)
        acc = np.zeros((BQ, dv), np.float32)
        s = np.empty((BQ, BK), np.float32)
        kt = np.empty((d, BK), np.float32)
        kend = sk
        if causal:
            kend = min(sk, q0 + nq + sk - sq)
        for k0 in range(0, kend, BK):
            nk = min(BK, kend - k0)
            for b in range(nk):
                for e in range(d):
                    kt[e, b] = k[n, k0 + b, e]
            for a in range(nq):
                for b in range(nk):
                    s[a, b] = np.float32(0.0)
                for e in range(d):
                    qa = q[n, q0 + a, e] * scale
                    for b in range(nk):
                        s[a, b] += qa * kt[e, b]
                limit = q0 + a + sk - sq
                mx = neg_inf
                for b in range(nk):
                    x = s[a, b] + bias[n, q0 + a, k0 + b]
                    if causal and k0 + b > limit:
                        x = neg_inf
                    s[a, b] = x
                    mx = max(mx, x)
                m_new = max(m[a], mx)
                if m_new == neg_inf:
                    continue  # every key so far is masked: nothing to add
                corr = fexp(m[a] - m_new)
                total = ell[a] * corr
                for b in range(nk):
                    p = fexp(s[a, b] - m_new)
                    s[a, b] = p
                    total += p
                ell[a] = total
                for e in range(dv):
                    acc[a, e] *= corr
                for b in range(nk):
                    p = s[a, b]
                    for e in range(dv):
                        acc[a, e] += p * v[n, k0 + b, e]
                m[a] = m_new
        for a in range(nq):
            inv = np.float32(1.0) / ell[a]
            for e in range(dv):
                out[n, q0 + a, e] = acc[a, e] * inv
