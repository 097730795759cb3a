"""Each routing function against a literal, loop-based transcription of its paper's procedure.

The oracles below loop over samples, children, parents and dimensions with scalar tensors, the way
the procedures are printed; the batched functions must give the same values and, through autograd,
the same gradients w.r.t. every input (float64, tiny inputs).
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.models.capsnet import dynamic_routing as capsnet_dynamic_routing
from bench.models.routing import (
    dynamic_routing,
    efficient_squash,
    em_inverse_temperatures,
    em_routing,
    self_attention_routing,
    self_routing,
)

EPS = 1e-3  # bench.models.routing.EM_EPS


def _softmax(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    m = max(float(x.detach()) for x in xs)
    es = [torch.exp(x - m) for x in xs]
    z = sum(es)
    return [e / z for e in es]


def _grads(out: tuple[torch.Tensor, ...], inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Gradients of a fixed random linear functional of the outputs."""
    g = torch.Generator().manual_seed(seed)
    total = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in out)
    return list(torch.autograd.grad(total, inputs))


def _leaves(*ts: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in ts]


# --- dynamic routing: Sabour et al. 2017, Procedure 1 ---


def _dynamic_loop(u_hat: torch.Tensor, r: int) -> torch.Tensor:
    bsz, j_n, i_n, d = u_hat.shape
    out = []
    for b in range(bsz):
        logit = [[u_hat.new_zeros(()) for _ in range(j_n)] for _ in range(i_n)]
        v = []
        for it in range(r):
            c = [_softmax(logit[i]) for i in range(i_n)]  # over the parents
            v = []
            for j in range(j_n):
                s = sum(c[i][j] * u_hat[b, j, i] for i in range(i_n))
                n2 = (s * s).sum()
                v.append(n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8))
            if it + 1 < r:
                for i in range(i_n):
                    for j in range(j_n):
                        logit[i][j] = logit[i][j] + (u_hat[b, j, i] * v[j]).sum()
        out.append(torch.stack(v))
    return torch.stack(out)


@pytest.mark.parametrize("iterations", [1, 3])
def test_dynamic_routing_is_the_capsnets_and_matches_procedure_1(iterations):
    assert dynamic_routing is capsnet_dynamic_routing
    torch.manual_seed(0)
    (u,) = _leaves(torch.randn(2, 3, 4, 5, dtype=torch.float64) * 0.5)
    (u2,) = _leaves(u)
    v, _ = dynamic_routing(u, iterations)
    ref = _dynamic_loop(u2, iterations)
    torch.testing.assert_close(v, ref)
    for a, b in zip(_grads((v,), [u], 1), _grads((ref,), [u2], 1), strict=True):
        torch.testing.assert_close(a, b)


# --- EM routing: Hinton, Sabour & Frosst 2018, Procedure 1 ---


def _em_loop(votes, a_in, beta_u, beta_a, iterations, final_lambda):
    bsz, i_n, j_n, h_n = votes.shape
    a_all, mu_all, var_all = [], [], []
    for b in range(bsz):
        R = [[votes.new_tensor(1.0 / j_n) for _ in range(j_n)] for _ in range(i_n)]
        for t in range(1, iterations + 1):
            lam = final_lambda * (1 - 0.95**t)
            # M-step for every parent j
            a_out, mu, var = [], [], []
            for j in range(j_n):
                Rj = [R[i][j] * a_in[b, i] for i in range(i_n)]
                rsum = sum(Rj)
                mu_j = [sum(Rj[i] * votes[b, i, j, h] for i in range(i_n)) / (rsum + EPS) for h in range(h_n)]
                var_j = [
                    sum(Rj[i] * (votes[b, i, j, h] - mu_j[h]) ** 2 for i in range(i_n)) / (rsum + EPS) + EPS
                    for h in range(h_n)
                ]
                cost = sum((beta_u[j] + torch.log(torch.sqrt(var_j[h]))) * rsum for h in range(h_n))
                a_out.append(torch.sigmoid(lam * (beta_a[j] - cost)))
                mu.append(torch.stack(mu_j))
                var.append(torch.stack(var_j))
            if t < iterations:  # E-step for every child i
                for i in range(i_n):
                    ap = []
                    for j in range(j_n):
                        log_p = sum(
                            -0.5 * math.log(2 * math.pi) - 0.5 * torch.log(var[j][h])
                            - (votes[b, i, j, h] - mu[j][h]) ** 2 / (2 * var[j][h])
                            for h in range(h_n)
                        )
                        ap.append(torch.log(a_out[j]) + log_p)  # a_j p_j in the log domain
                    R[i] = _softmax(ap)
        a_all.append(torch.stack(a_out))
        mu_all.append(torch.stack(mu))
        var_all.append(torch.stack(var))
    return torch.stack(a_all), torch.stack(mu_all), torch.stack(var_all)


def test_em_inverse_temperature_schedule():
    assert em_inverse_temperatures(3) == pytest.approx([0.01 * 0.05, 0.01 * 0.0975, 0.01 * 0.142625])


@pytest.mark.parametrize("iterations,final_lambda", [(1, 0.01), (3, 0.01), (3, 1.0)])
def test_em_routing_matches_procedure_1(iterations, final_lambda):
    torch.manual_seed(1)
    ins = (
        torch.randn(2, 5, 3, 4, dtype=torch.float64),
        torch.rand(2, 5, dtype=torch.float64),
        torch.randn(3, dtype=torch.float64) * 0.1,
        torch.randn(3, dtype=torch.float64),
    )
    x, xr = _leaves(*ins), _leaves(*ins)
    out = em_routing(*x, iterations=iterations, final_lambda=final_lambda)
    ref = _em_loop(*xr, iterations, final_lambda)
    for o, r in zip(out, ref, strict=True):
        torch.testing.assert_close(o, r)
    assert ((out[0] > 0) & (out[0] < 1)).all()
    for a, b in zip(_grads(out, x, 2), _grads(ref, xr, 2), strict=True):
        torch.testing.assert_close(a, b)


# --- self-routing: Hahn, Pyeon & Kim 2019 ---


def _self_loop(u, a, w, bias, u_hat):
    bsz, i_n, din = u.shape
    j_n = w.shape[1]
    a_all, v_all = [], []
    for b in range(bsz):
        c = []
        for i in range(i_n):
            logits = [sum(w[i, j, k] * u[b, i, k] for k in range(din)) + bias[i, j] for j in range(j_n)]
            c.append(_softmax(logits))
        a_sum = sum(a[b, i] for i in range(i_n))
        a_out, v = [], []
        for j in range(j_n):
            ar = [c[i][j] * a[b, i] for i in range(i_n)]
            a_out.append(sum(ar) / a_sum)
            v.append(sum(ar[i] * u_hat[b, j, i] for i in range(i_n)) / sum(ar))
        a_all.append(torch.stack(a_out))
        v_all.append(torch.stack(v))
    return torch.stack(a_all), torch.stack(v_all)


def test_self_routing_matches_the_papers_formulas():
    torch.manual_seed(2)
    ins = (
        torch.randn(2, 5, 4, dtype=torch.float64),
        torch.rand(2, 5, dtype=torch.float64) * 0.9 + 0.05,
        torch.randn(5, 3, 4, dtype=torch.float64),
        torch.randn(5, 3, dtype=torch.float64),
        torch.randn(2, 3, 5, 6, dtype=torch.float64),
    )
    x, xr = _leaves(*ins), _leaves(*ins)
    a_out, v, c = self_routing(*x)
    ref = _self_loop(*xr)
    torch.testing.assert_close(a_out, ref[0])
    torch.testing.assert_close(v, ref[1])
    torch.testing.assert_close(a_out.sum(1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(c.sum(1), torch.ones(2, 5, dtype=torch.float64))
    for g1, g2 in zip(_grads((a_out, v), x, 3), _grads(ref, xr, 3), strict=True):
        torch.testing.assert_close(g1, g2)
    a_only, none, _ = self_routing(*x[:4])
    assert none is None
    torch.testing.assert_close(a_only, a_out)


# --- self-attention routing: Mazzia, Salvetti & Chiaberge 2021 ---


def _attention_loop(u_hat, priors):
    bsz, j_n, i_n, d = u_hat.shape
    out = []
    for b in range(bsz):
        # A_j = U_j U_j^T / sqrt(d), the full I x I matrix, then its row sums
        row = [[None] * i_n for _ in range(j_n)]
        for j in range(j_n):
            for i in range(i_n):
                row[j][i] = sum((u_hat[b, j, i] * u_hat[b, j, k]).sum() / math.sqrt(d) for k in range(i_n))
        c = [[None] * i_n for _ in range(j_n)]
        for i in range(i_n):
            ci = _softmax([row[j][i] for j in range(j_n)])  # over the parents
            for j in range(j_n):
                c[j][i] = ci[j]
        v = []
        for j in range(j_n):
            s = sum((c[j][i] + priors[j, i]) * u_hat[b, j, i] for i in range(i_n))
            n = torch.sqrt((s * s).sum() + 1e-8)
            v.append((1 - 1 / torch.exp(n)) * s / n)
        out.append(torch.stack(v))
    return torch.stack(out)


def test_self_attention_routing_matches_the_papers_formulas():
    torch.manual_seed(3)
    ins = (torch.randn(2, 3, 5, 4, dtype=torch.float64) * 0.5, torch.randn(3, 5, dtype=torch.float64) * 0.1)
    x, xr = _leaves(*ins), _leaves(*ins)
    v, c = self_attention_routing(*x)
    ref = _attention_loop(*xr)
    torch.testing.assert_close(v, ref)
    torch.testing.assert_close(c.sum(1), torch.ones(2, 5, dtype=torch.float64))
    for g1, g2 in zip(_grads((v,), x, 4), _grads((ref,), xr, 4), strict=True):
        torch.testing.assert_close(g1, g2)


def test_efficient_squash_keeps_direction_and_bounds_length():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    v = efficient_squash(s)
    assert v[0].norm().item() == pytest.approx(1 - math.exp(-5.0), rel=1e-6)
    torch.testing.assert_close(v[0] / v[0].norm(), torch.tensor([0.6, 0.8]))
    assert torch.equal(v[1], torch.zeros(2))


@pytest.mark.parametrize(
    "call",
    [
        lambda: em_routing(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2), torch.zeros(3), torch.zeros(3), 0),
        lambda: em_routing(torch.zeros(1, 2, 3), torch.zeros(1, 2), torch.zeros(3), torch.zeros(3)),
        lambda: self_routing(
            torch.zeros(1, 2, 4), torch.zeros(1, 3), torch.zeros(2, 3, 4), torch.zeros(2, 3)
        ),
        lambda: self_attention_routing(torch.zeros(1, 3, 2, 4), torch.zeros(2, 3)),
    ],
)
def test_routing_rejects_bad_shapes(call):
    with pytest.raises(ValueError):
        call()
