"""Routing algorithms between capsule layers, one function each, batched over the whole input.

- :func:`dynamic_routing`: routing-by-agreement (Sabour, Frosst & Hinton, NeurIPS 2017,
  Procedure 1), re-exported from :mod:`bench.models.capsnet`.
- :func:`em_routing`: EM routing between matrix capsules (Hinton, Sabour & Frosst, "Matrix capsules
  with EM routing", ICLR 2018, Procedure 1 and Section 2).
- :func:`self_routing`: the routing of Hahn, Pyeon & Kim, "Self-Routing Capsule Networks",
  NeurIPS 2019: every child capsule has its own routing network, no iterations.
- :func:`self_attention_routing`: the FCCaps layer of Mazzia, Salvetti & Chiaberge, "Efficient-
  CapsNet: Capsule Network with Self-Attention Routing", Scientific Reports 11, 14634 (2021),
  arXiv:2101.12491, the self-attention routing of its FCCaps layer; with :func:`efficient_squash`,
  the paper's squash.

Layout: votes (predictions of child i for parent j) are parent-major ``(B, J, I, D)`` for the
vector-capsule routings, as in :func:`dynamic_routing`; EM routing takes child-major
``(B, I, J, H)`` votes because its E-step normalises over the parents of each child. Every function
is differentiable end to end with plain autograd; tests/models/test_routing.py checks values and gradients
against loop-based implementations of each paper's procedure.
"""

from __future__ import annotations

import contextlib
import math

import torch

from bench.models.capsnet import dynamic_routing

__all__ = [
    "EM_EPS",
    "EM_FINAL_LAMBDA",
    "dynamic_routing",
    "efficient_squash",
    "em_inverse_temperatures",
    "em_routing",
    "float32_routing",
    "self_attention_routing",
    "self_routing",
]

# Our choice: the variance floor and denominator guard of EM routing (the paper states none).
# With 1e-6 the EM head failed to train on 3 of the routing profile's 9 cells: one class's votes
# collapsed to a tiny variance, its cost (0.5 log sigma^2, summed over 16 entries and weighted by
# the data assigned to it) became so negative that its activation sat at 1.0 for every input and
# its sigmoid's gradient vanished. With 1e-3 the two failed n = 3,000 cells (seeds 0 and 2)
# reached 95.5 and 96.7 % validation accuracy (800 steps, lr 3e-3, width 1/4).
EM_EPS = 1e-3
# The final inverse temperature, from the authors' reply on OpenReview (forum HJWLfGWRb), as used
# by coder3000/SR-CapsNet (modules.py, EmRouting2d: final_lambda=1e-2).
EM_FINAL_LAMBDA = 0.01
_LOG_2PI = math.log(2.0 * math.pi)
_EPS = 1e-8  # keeps the norm's gradient finite at s = 0 (as in capsnet.squash)
_TINY = 1e-12  # guards a division by a sum of activations in self-routing


def float32_routing(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which routing runs in float32 under CUDA autocast (cast the inputs with
    ``.float()``), as :func:`dynamic_routing` does; a no-op elsewhere (the trainer autocasts on
    CUDA only)."""
    if device.type == "cuda":
        return torch.autocast("cuda", enabled=False)
    return contextlib.nullcontext()


def em_inverse_temperatures(iterations: int, final_lambda: float = EM_FINAL_LAMBDA) -> list[float]:
    """The inverse temperature lambda of each EM iteration t = 1..T.

    The paper (Section 2) only says "a fixed schedule for lambda as a hyper-parameter". The authors'
    reply on OpenReview gives lambda_t = final_lambda * (1 - 0.95^t) with final_lambda = 0.01; the
    same formula is in coder3000/SR-CapsNet (modules.py, EmRouting2d.forward).
    """
    return [final_lambda * (1.0 - 0.95 ** (t + 1)) for t in range(iterations)]


def em_routing(
    votes: torch.Tensor,
    a_in: torch.Tensor,
    beta_u: torch.Tensor,
    beta_a: torch.Tensor,
    iterations: int = 3,
    final_lambda: float = EM_FINAL_LAMBDA,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EM routing, Procedure 1 of Hinton, Sabour & Frosst (ICLR 2018), for a whole batch.

    Every parent j is a Gaussian over the H = 16 entries of a 4x4 pose matrix (axis-aligned, one
    sigma per entry h); the children's votes V_ij are the data points, each weighted by the child's
    activation a_i. R_ij starts at 1/J; each iteration t runs

    - M-step: R_ij <- R_ij a_i; mu_j^h = sum_i R_ij V_ij^h / sum_i R_ij;
      (sigma_j^h)^2 = sum_i R_ij (V_ij^h - mu_j^h)^2 / sum_i R_ij;
      cost_j^h = (beta_u + log sigma_j^h) sum_i R_ij;
      a_j = logistic(lambda_t (beta_a - sum_h cost_j^h));
    - E-step (skipped after the last M-step, as in the procedure):
      p_ij = prod_h N(V_ij^h; mu_j^h, (sigma_j^h)^2), R_ij = a_j p_ij / sum_k a_k p_ik,
      computed in the log domain (a softmax over the parents of log a_j + log p_ij).

    What the paper leaves open and what we chose:

    - lambda_t: :func:`em_inverse_temperatures` (the authors' OpenReview reply, 0.01 (1 - 0.95^t)).
    - beta_u, beta_a: "learned discriminatively" (Section 2), granularity unstated. Our choice:
      one of each per parent capsule type, as coder3000/SR-CapsNet (modules.py, EmRouting2d)
      does; pass ``(J,)`` tensors (a 0-d tensor shares one value over all parents).
    - The variance floor: our choice, ``EM_EPS`` added to sigma^2 and to sum_i R_ij.
    - The cost is used unnormalised, as printed (it grows with the number of children).
    - Gradients flow through every iteration (nothing is detached).

    Args:
        votes: ``(B, I, J, H)`` votes V_ij of child i for parent j (H = 16 for 4x4 poses).
        a_in: ``(B, I)`` child activations in [0, 1].
        beta_u, beta_a: ``(J,)`` (or 0-d) learned parameters.
        iterations: EM iterations T >= 1 (the paper uses 3).
        final_lambda: the inverse temperature's final value.

    Returns:
        a_out: ``(B, J)`` parent activations in (0, 1).
        mu: ``(B, J, H)`` parent poses (the means).
        sigma_sq: ``(B, J, H)`` the variances of the last M-step.
    """
    if iterations < 1:
        raise ValueError(f"routing needs iterations >= 1, got {iterations}")
    if votes.dim() != 4 or a_in.shape != votes.shape[:2]:
        raise ValueError(
            f"expected votes (B, I, J, H) and a_in (B, I), got {tuple(votes.shape)}, {tuple(a_in.shape)}"
        )
    b, i, j, h = votes.shape
    # Computed parent-major, (B, J, I, H): the sums over children are then batched matrix
    # products over contiguous rows (a no-copy view for votes made parent-major, as the heads do).
    v = votes.transpose(1, 2).contiguous()
    r = votes.new_full((b, j, i), 1.0 / j)  # R_ij, stored (B, J, I)
    a_out = mu = sigma_sq = votes  # overwritten by the first M-step
    for t, lam in enumerate(em_inverse_temperatures(iterations, final_lambda)):
        # M-step
        ra = r * a_in.unsqueeze(1)  # (B, J, I)
        r_sum = ra.sum(dim=2)  # (B, J)
        coeff = (ra / (r_sum.unsqueeze(2) + EM_EPS)).unsqueeze(2)  # (B, J, 1, I)
        mu = (coeff @ v).squeeze(2)  # (B, J, H)
        sq = (v - mu.unsqueeze(2)).pow(2)  # (B, J, I, H): used again by the E-step
        sigma_sq = (coeff @ sq).squeeze(2) + EM_EPS  # (B, J, H)
        cost = (beta_u.unsqueeze(-1) + 0.5 * torch.log(sigma_sq)) * r_sum.unsqueeze(-1)
        a_out = torch.sigmoid(lam * (beta_a - cost.sum(dim=-1)))  # (B, J)
        if t + 1 < iterations:  # E-step, with this M-step's mu and sigma
            log_p = -0.5 * (_LOG_2PI + torch.log(sigma_sq)).sum(dim=-1).unsqueeze(2) - (
                sq @ (0.5 / sigma_sq).unsqueeze(3)).squeeze(3)  # (B, J, I)
            r = torch.softmax(torch.log(a_out).unsqueeze(2) + log_p, dim=1)  # over the parents
    return a_out, mu, sigma_sq


def self_routing(
    u: torch.Tensor,
    a: torch.Tensor,
    w_route: torch.Tensor,
    b_route: torch.Tensor,
    u_hat: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Self-routing (Hahn, Pyeon & Kim, NeurIPS 2019), for a whole batch.

    Each child capsule i routes itself with its own one-layer routing network, without agreement
    or iterations: logits b_ij = (W^route_i u_i + b^route_i)_j, c_ij = softmax_j(b_ij). The parent's
    activation is the share of the children's activation routed to it,
    a_j = sum_i c_ij a_i / sum_i a_i (so sum_j a_j = 1), and its pose is the average of the votes
    weighted by c_ij a_i: u_j = sum_i c_ij a_i u_hat_{j|i} / sum_i c_ij a_i. The same formulas are
    in coder3000/SR-CapsNet (modules.py, SelfRouting2d.forward).

    Args:
        u: ``(B, I, Din)`` child poses (flattened).
        a: ``(B, I)`` child activations in (0, 1].
        w_route: ``(I, J, Din)`` routing weights W^route_i (row j gives parent j's logit).
        b_route: ``(I, J)`` routing biases.
        u_hat: ``(B, J, I, D)`` votes (parent-major), or None to skip the poses (the released
            code's final layer, ``pose_out=False``).

    Returns:
        a_out: ``(B, J)`` parent activations, summing to 1 over J.
        v: ``(B, J, D)`` parent poses, or None without ``u_hat``.
        c: ``(B, J, I)`` the routing coefficients c_ij (parent-major); ``c.sum(1) == 1``.
    """
    if u.dim() != 3 or a.shape != u.shape[:2] or w_route.shape[0] != u.shape[1]:
        raise ValueError(
            f"expected u (B, I, Din), a (B, I), w_route (I, J, Din), got "
            f"{tuple(u.shape)}, {tuple(a.shape)}, {tuple(w_route.shape)}"
        )
    logits = torch.einsum("bid,ijd->bij", u, w_route) + b_route  # (B, I, J)
    c = torch.softmax(logits, dim=-1)
    ar = (c * a.unsqueeze(-1)).transpose(1, 2)  # (B, J, I): c_ij a_i
    ar_sum = ar.sum(dim=-1)  # (B, J)
    a_out = ar_sum / a.sum(dim=1, keepdim=True).clamp_min(_TINY)
    v = None
    if u_hat is not None:
        weights = ar / ar_sum.unsqueeze(-1).clamp_min(_TINY)  # (B, J, I)
        v = torch.einsum("bji,bjid->bjd", weights, u_hat)
    return a_out, v, c.transpose(1, 2)


def efficient_squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Efficient-CapsNet's squash (Mazzia et al. 2021): v = (1 - 1/e^|s|) s / |s|.

    Like Sabour et al.'s Eq. 1 it keeps the direction and maps the length into [0, 1), but it is
    steeper near zero (EscVM/Efficient-CapsNet, utils/layers.py, Squash). ``|s|`` is computed as
    sqrt(|s|^2 + 1e-8) so that the gradient is finite.
    """
    n = torch.sqrt((s * s).sum(dim=dim, keepdim=True) + _EPS)
    return (1.0 - torch.exp(-n)) * s / n


def self_attention_routing(
    u_hat: torch.Tensor, log_priors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention routing of Efficient-CapsNet (Mazzia et al. 2021), one pass, no iterations.

    For each parent j, the self-attention matrix of its votes is A_j = U_j U_j^T / sqrt(D)
    (``(I, I)``, U_j the ``(I, D)`` matrix of votes u_hat_{j|i}). Each child's coupling to parent j
    is the softmax over the PARENTS of the row sums of A_j: c_ij = exp(sum_k A_j[i, k]) /
    sum_j' exp(sum_k A_j'[i, k]). With learned log priors B (``b_ij``), s_j = U_j^T (c_j + b_j) =
    sum_i (c_ij + b_ij) u_hat_{j|i}, and v_j = efficient_squash(s_j). The released code
    (EscVM/Efficient-CapsNet, utils/layers.py, FCCaps) adds b after the softmax and initialises
    it to zero, as here.

    The row sum is computed as <u_hat_{j|i}, sum_k u_hat_{j|k}> / sqrt(D): the same number in
    O(I D) instead of O(I^2 D) per parent.

    Args:
        u_hat: ``(B, J, I, D)`` votes of I children for J parents.
        log_priors: ``(J, I)`` the learned b_ij.

    Returns:
        v: ``(B, J, D)`` parent capsules, lengths in [0, 1).
        c: ``(B, J, I)`` the coupling coefficients; ``c.sum(1) == 1``.
    """
    if u_hat.dim() != 4 or log_priors.shape != u_hat.shape[1:3]:
        raise ValueError(
            f"expected u_hat (B, J, I, D) and log_priors (J, I), got "
            f"{tuple(u_hat.shape)}, {tuple(log_priors.shape)}"
        )
    d = u_hat.shape[-1]
    total = u_hat.sum(dim=2, keepdim=True)  # (B, J, 1, D): sum_k u_hat_{j|k}
    logits = (u_hat * total).sum(dim=-1) / math.sqrt(d)  # (B, J, I): row sums of A_j
    c = torch.softmax(logits, dim=1)  # over the parents
    s = ((c + log_priors).unsqueeze(-1) * u_hat).sum(dim=2)  # (B, J, D)
    return efficient_squash(s), c
