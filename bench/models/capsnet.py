"""CapsNet with routing-by-agreement (Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
NeurIPS 2017, arXiv:1710.09829).

Architecture (Section 4, Fig. 1 and 2), at width 1.0:

- Conv1: 256 channels, 9x9, stride 1, ReLU.
- PrimaryCaps: 32 types of 8D capsules, 9x9, stride 2: one convolution with 32 * 8 = 256 output
  channels whose channels are grouped (type, atom), then squash (Eq. 1).
- DigitCaps: 10 capsules of 16D. Each primary capsule i (a position and a type) has its own
  8x16 matrix W_ij per parent j (Eq. 2, no bias), and the parents come out of routing-by-agreement
  (Procedure 1) in :func:`dynamic_routing`.
- Decoder (Section 4.1, Fig. 2): the 10x16 DigitCaps activities with every capsule but one masked
  to zero (the true class while training, the longest capsule when no label is given) ->
  FC 512 ReLU -> FC 1024 ReLU -> FC H*W sigmoid.
- Loss: margin loss (Eq. 4, m+ = 0.9, m- = 0.1, lambda = 0.5, summed over classes) plus
  ``recon_weight`` x the sum of squared reconstruction errors; both averaged over the batch.
  The paper's weight is 0.0005 (Section 4.1, :data:`RECON_WEIGHT`).

At 28x28 this has 8,215,568 parameters, 6,804,224 without the decoder: the paper's "8.2M" and
"6.8M" (Section 5). ``width`` scales Conv1's channels and the number of primary capsule types;
the DigitCaps (10 x 16D) and the decoder stay as in the paper, so that every variant classifies
and reconstructs through the same 160-D bottleneck.

Choices the paper leaves open, settled by the authors' released code (``research/capsules`` in
tensorflow/models, ``models/layers.py``):

- Gradients flow through every routing iteration: the released ``_update_routing`` uses the votes
  u_hat unstopped both in the weighted sum s_j and in the agreement <u_hat, v_j> (no
  ``stop_gradient``). We do the same (some re-implementations stop the gradient through the
  agreement; that is a different model).
- The released code adds a bias to s_j; the paper's equations and its parameter counts have none,
  and we follow the paper.
- W is initialised from a normal with std 0.1 truncated at 2 std (the released
  ``weight_variable`` default); convolutions and the decoder use PyTorch's defaults.
- The released margin loss (``_margin_loss`` in ``layers.py``) is 0.5 x each class's term of
  Eq. 4, and ``evaluate`` averages it with ``reduce_mean`` over the batch AND the 10 classes: per
  image that is Eq. 4 / 20. The released reconstruction loss (``reconstruction``) is 0.0005 x the
  per-image sum of squared errors, averaged over the batch. Relative to the margin term the released
  code therefore weights reconstruction 20x more than the paper's text: 0.01 against Eq. 4 as printed
  (:data:`RELEASED_RECON_WEIGHT`). We keep Eq. 4 as printed and make the weight a parameter
  (``[model] recon_weight`` in a profile; the ``capsnet-released-loss`` variant): with Adam only
  the ratio of the two terms matters, up to Adam's epsilon.

Component switches (the ablation ladder of :mod:`bench.models.ladder`; Gu, Tresp & Hu, CVPR 2021,
name these five components): ``iterations`` (1 = no routing: b = 0 gives the uniform coupling
c_ij = 1/10 of Eq. 3), ``shared_w`` (one 8x16 matrix per primary capsule TYPE and parent, shared
over the grid positions, instead of one per primary capsule), ``squash`` (False: the identity in
place of Eq. 1, on the primary capsules and on the DigitCaps), ``loss`` (``"margin"``, Eq. 4, or
``"ce"``, cross-entropy with the DigitCaps lengths as logits) and ``reconstruction``. With shared
W and uniform coupling, s_j = (1/10) sum_t W_tj (sum_g u_tg): a global sum pool of the primary
capsules over positions followed by one linear map, i.e. a pooling head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.registry import NUM_CLASSES, Output, register_model, scaled

__all__ = [
    "LOSSES",
    "RECON_WEIGHT",
    "RELEASED_RECON_WEIGHT",
    "CapsNet",
    "capsule_loss",
    "dynamic_routing",
    "margin_loss",
    "reconstruction_decoder",
    "squash",
]

RECON_WEIGHT = 0.0005  # Section 4.1: "scale down this reconstruction loss by 0.0005"
# The released code's balance against Eq. 4 as printed: 0.0005 x 20 (see the module docstring).
RELEASED_RECON_WEIGHT = 0.01
_EPS = 1e-8  # keeps squash's gradient finite at s = 0


def squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Eq. 1: v = |s|^2 / (1 + |s|^2) * s / |s|, along ``dim``.

    Short vectors shrink to almost zero length and long ones to a length just below 1, keeping the
    direction: the length of a capsule's output is the probability that its entity is present.
    The norm of the result is strictly below 1 and increases with |s|.
    """
    sq = (s * s).sum(dim=dim, keepdim=True)
    return s * (sq / ((1.0 + sq) * torch.sqrt(sq + _EPS)))


def _route(
    u_hat: torch.Tensor, iterations: int
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Procedure 1, forward: the coupling coefficients c, sums s and outputs v of every iteration.

    ``u_hat`` is ``(B, J, I, D)`` contiguous. Both sums are batched products over the B*J
    (sample, parent) pairs: s_j = c_j^T U_j and <u_hat_{j|i}, v_j> = v_j^T U_j^T, where U_j is
    the (I, D) block of predictions for parent j (a row-vector times matrix is the fast form of
    BLAS here).

    Our choice, measured on 2 cores at B = 32, I = 576 (best of 30 calls, torch 2.14): with
    contiguous U_j, s 0.26 ms and the agreement 0.53 ms; the same products on the (I, B*J, D)
    layout that the predictions' bmm writes (rows B*J*D apart, no reorder copy) 0.38 and 0.63 ms,
    which costs more than the reorder copy it saves (0.53 ms); the agreement as U_j v_j 1.09 ms.
    """
    b, j, i, d = u_hat.shape
    u = u_hat.view(b * j, i, d)
    logits = u_hat.new_zeros(b, j, i)
    cs, ss, vs = [], [], []
    for r in range(iterations):
        c = torch.softmax(logits, dim=1)  # over the parents: each child's c sums to 1 (Eq. 3)
        s = torch.bmm(c.view(b * j, 1, i), u).view(b, j, d)  # s_j = sum_i c_ij u_hat_{j|i}
        v = squash(s)  # Eq. 1
        cs.append(c)
        ss.append(s)
        vs.append(v)
        if r + 1 < iterations:  # the last update cannot change the output
            agreement = torch.bmm(v.view(b * j, 1, d), u.transpose(1, 2)).view(b, j, i)
            logits = logits + agreement  # b_ij += <u_hat_{j|i}, v_j>
    return cs, ss, vs


class _DynamicRouting(torch.autograd.Function):
    """Procedure 1 with its exact gradient through every iteration, computed by hand.

    Autograd would write one full-size (B, J, I, D) gradient per use of u_hat (2r - 1 of them)
    and add them up, and its backward of the batched row-vector products is an outer product
    that BLAS runs slowly. By hand, the gradient w.r.t. u_hat is a sum of 2r - 1 rank-one
    terms per (sample, parent), written once by a single batched matrix product. The first
    iteration's coupling coefficients are softmax(0), a constant, so the backward stops there
    without the product for their gradient (one pass over u_hat fewer; the result is bitwise the
    same). The tests check it against autograd through a plain implementation (values, gradients,
    gradcheck) and against Eq. 1-4 in float64 (tests/models/test_capsnet_numerics.py).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # routing in float32
    def forward(ctx, u_hat: torch.Tensor, iterations: int):
        u_hat = u_hat.contiguous()
        cs, ss, vs = _route(u_hat, iterations)
        ctx.iterations = iterations
        ctx.save_for_backward(u_hat, *cs, *ss, *vs)
        return vs[-1], cs[-1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_v: torch.Tensor, grad_c: torch.Tensor | None):
        r_total = ctx.iterations
        u_hat, *saved = ctx.saved_tensors
        cs, ss, vs = saved[:r_total], saved[r_total : 2 * r_total], saved[2 * r_total :]
        b, j, i, d = u_hat.shape
        n = b * j
        u = u_hat.view(n, i, d)
        # grad u_hat = sum_k left_k (x) right_k over the 2r - 1 uses of u_hat
        left = u_hat.new_empty(n, 2 * r_total - 1, i)
        right = u_hat.new_empty(n, 2 * r_total - 1, d)
        k = 0
        grad_logits = torch.zeros_like(cs[0])  # dL/d b_{r+1}
        for r in range(r_total - 1, -1, -1):
            gv = grad_v if r == r_total - 1 else torch.zeros_like(vs[r])
            if r + 1 < r_total:  # b_{r+1} = b_r + <u_hat, v_r>
                gv = gv + torch.bmm(grad_logits.view(n, 1, i), u).view(b, j, d)
                left[:, k], right[:, k] = grad_logits.view(n, i), vs[r].view(n, d)
                k += 1
            with torch.enable_grad():  # squash's backward on a (B, J, D) tensor: cheap
                s = ss[r].detach().requires_grad_()
                (gs,) = torch.autograd.grad(squash(s), s, gv)
            left[:, k], right[:, k] = cs[r].view(n, i), gs.view(n, d)
            k += 1
            if r == 0:  # c_0 = softmax(0) is a constant: nothing flows through it
                break
            gc = torch.bmm(gs.view(n, 1, d), u.transpose(1, 2)).view(b, j, i)
            if r == r_total - 1 and grad_c is not None:
                gc = gc + grad_c
            c = cs[r]  # softmax backward over the parents
            grad_logits = grad_logits + c * (gc - (gc * c).sum(dim=1, keepdim=True))
        grad_u = torch.bmm(left.transpose(1, 2), right).view(b, j, i, d)
        return grad_u, None


def dynamic_routing(u_hat: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing-by-agreement, Procedure 1 of Sabour et al. (2017), for a whole batch at once.

    Convention: the layout is parent-major, ``u_hat[b, j, i]`` is the prediction u_hat_{j|i}
    of child capsule i for parent capsule j (Eq. 2), so that both sums of the procedure are batched
    matrix products over contiguous memory (no loop over capsules, only over iterations).

    For r iterations: the logits b_ij start at 0; c_i = softmax(b_i) over the PARENTS j (Eq. 3,
    so each child's coupling coefficients sum to 1 over parents); s_j = sum_i c_ij u_hat_{j|i};
    v_j = squash(s_j) (Eq. 1); b_ij += <u_hat_{j|i}, v_j>. The agreement update after the last
    iteration cannot change the output and is skipped. Gradients flow through every iteration,
    as in the authors' code (:class:`_DynamicRouting` computes them). Under CUDA autocast the
    routing runs in float32.

    Args:
        u_hat: ``(B, J, I, D)`` predictions of I children for J parents of D dimensions.
        iterations: number of routing iterations r >= 1 (the paper uses 3).

    Returns:
        v: ``(B, J, D)`` parent capsule outputs.
        c: ``(B, J, I)`` the coupling coefficients of the last iteration; ``c.sum(1) == 1``.
    """
    if iterations < 1:
        raise ValueError(f"routing needs iterations >= 1, got {iterations}")
    if u_hat.dim() != 4:
        raise ValueError(f"expected u_hat of shape (B, J, I, D), got {tuple(u_hat.shape)}")
    return _DynamicRouting.apply(u_hat, iterations)


def margin_loss(
    lengths: torch.Tensor,
    y: torch.Tensor,
    m_plus: float = 0.9,
    m_minus: float = 0.1,
    lam: float = 0.5,
) -> torch.Tensor:
    """Eq. 4: L_k = T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2.

    Summed over the classes k, averaged over the batch. ``lengths`` is ``(B, K)``, ``y`` ``(B,)``.
    """
    t = F.one_hot(y, lengths.shape[1]).to(lengths.dtype)
    present = t * F.relu(m_plus - lengths).pow(2)
    absent = lam * (1.0 - t) * F.relu(lengths - m_minus).pow(2)
    return (present + absent).sum(dim=1).mean()


LOSSES = ("margin", "ce")


def capsule_loss(out: Output, x: torch.Tensor, y: torch.Tensor, kind: str,
                 recon_weight: float) -> torch.Tensor:
    """``kind`` ``"margin"``: Eq. 4 on ``out.logits`` (capsule lengths); ``"ce"``: cross-entropy
    with them as logits. Plus ``recon_weight`` x the per-image sum of squared reconstruction
    errors when ``out.reconstruction`` is given; both averaged over the batch."""
    logits = out.logits.float()
    loss = margin_loss(logits, y) if kind == "margin" else F.cross_entropy(logits, y)
    if out.reconstruction is not None:
        err = (out.reconstruction.float() - x.flatten(1).float()).pow(2).sum(dim=1).mean()
        loss = loss + recon_weight * err
    return loss


def reconstruction_decoder(in_features: int, pixels: int) -> nn.Sequential:
    """The decoder of Section 4.1, Fig. 2: the masked class capsules ``(B, in_features)`` ->
    FC 512 ReLU -> FC 1024 ReLU -> FC ``pixels`` sigmoid."""
    return nn.Sequential(
        nn.Linear(in_features, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 1024),
        nn.ReLU(inplace=True),
        nn.Linear(1024, pixels),
        nn.Sigmoid(),
    )


class CapsNet(nn.Module):
    """The three-layer CapsNet of Fig. 1 with the decoder of Fig. 2 (optional).

    ``forward(x, y=None)`` takes ``x (B, 1, H, W)`` in [0, 1] and returns an :class:`Output`:
    logits = scores = the 10 DigitCaps lengths, features = the 16D pose of the longest capsule,
    reconstruction ``(B, H*W)`` (masked by ``y`` when given, by the longest capsule otherwise) or
    None without a decoder.
    """

    def __init__(
        self,
        input_size: int = 28,
        width: float = 1.0,
        iterations: int = 3,
        reconstruction: bool = True,
        conv_channels: int = 256,
        primary_types: int = 32,
        primary_dim: int = 8,
        digit_dim: int = 16,
        kernel: int = 9,
        recon_weight: float = RECON_WEIGHT,
        shared_w: bool = False,
        squash: bool = True,
        loss: str = "margin",
    ):
        super().__init__()
        if recon_weight < 0:
            raise ValueError(f"recon_weight must be >= 0, got {recon_weight}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not squash and iterations != 1:
            # Procedure 1's agreement <u_hat, v> is defined on squashed outputs (our choice: no
            # unsquashed routing variant).
            raise ValueError(f"squash=False needs iterations=1 (no routing), got {iterations}")
        self.recon_weight = recon_weight
        self.shared_w = shared_w
        self.use_squash = squash
        self.loss_kind = loss
        self.input_size = input_size
        self.iterations = iterations
        self.types = scaled(primary_types, width)
        self.primary_dim = primary_dim
        self.digit_dim = digit_dim
        channels = scaled(conv_channels, width)
        self.grid = ((input_size - kernel + 1) - kernel) // 2 + 1  # valid conv, then stride 2
        if self.grid < 1:
            raise ValueError(f"input_size {input_size} too small for two {kernel}x{kernel} convs")
        self.num_primary = self.types * self.grid * self.grid

        self.conv1 = nn.Conv2d(1, channels, kernel)
        self.primary = nn.Conv2d(channels, self.types * primary_dim, kernel, stride=2)
        # W[i] = [W_i1^T ... W_i10^T], 8 x (10 x 16): one 8x16 matrix per (primary capsule,
        # parent), Eq. 2; with shared_w one per (capsule type, parent). Stored 3-D so that
        # channels_last conversion leaves it alone.
        rows = self.types if shared_w else self.num_primary
        self.W = nn.Parameter(torch.empty(rows, primary_dim, NUM_CLASSES * digit_dim))
        nn.init.trunc_normal_(self.W, std=0.1, a=-0.2, b=0.2)
        self.decoder = (
            reconstruction_decoder(NUM_CLASSES * digit_dim, input_size * input_size)
            if reconstruction
            else None
        )

    def primary_capsules(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, I, 8)`` squashed primary capsules, I = types x grid x grid (type-major)."""
        h = F.relu(self.conv1(x))
        p = self.primary(h)  # (B, types*8, g, g), channels grouped (type, atom)
        b = p.shape[0]
        p = p.reshape(b, self.types, self.primary_dim, self.grid * self.grid)
        u = p.transpose(2, 3).reshape(b, self.num_primary, self.primary_dim)
        return squash(u) if self.use_squash else u

    def predictions(self, u: torch.Tensor) -> torch.Tensor:
        """Eq. 2, u_hat_{j|i} = W_ij u_i, for all i and j: ``(B, I, 8) -> (B, J, I, 16)``.

        With ``shared_w`` every position g of capsule type t uses W_t: ``W_ij = W_{t(i) j}``.
        """
        b = u.shape[0]
        if self.shared_w:  # (B, T, G, 8) x (T, 8, J*D) -> (B, T, G, J*D), children type-major
            u_hat = torch.einsum("btgk,tkm->btgm", u.reshape(b, self.types, -1, self.primary_dim),
                                 self.W)
            u_hat = u_hat.reshape(b, self.num_primary, NUM_CLASSES, self.digit_dim)
            return u_hat.permute(0, 2, 1, 3).contiguous()  # (B, J, I, D)
        u_hat = torch.bmm(u.transpose(0, 1), self.W)  # (I, B, 8) @ (I, 8, J*D) -> (I, B, J*D)
        u_hat = u_hat.view(self.num_primary, b, NUM_CLASSES, self.digit_dim)
        return u_hat.permute(1, 2, 0, 3).contiguous()  # (B, J, I, D)

    def digit_capsules(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DigitCaps outputs ``(B, 10, 16)`` and coupling coefficients ``(B, 10, I)``.

        Without squash (one iteration only): s_j = sum_i (1/10) u_hat_{j|i} and v_j = s_j.
        """
        u_hat = self.predictions(u)
        if self.use_squash:
            return dynamic_routing(u_hat, self.iterations)
        c = u_hat.new_full(u_hat.shape[:3], 1.0 / NUM_CLASSES)  # b = 0: softmax over parents
        return u_hat.sum(dim=2) / NUM_CLASSES, c

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Output:
        v, _ = self.digit_capsules(self.primary_capsules(x))
        lengths = torch.linalg.vector_norm(v, dim=-1)  # (B, 10): probability of each digit
        # Unsquashed lengths are not in [0, 1]: their softmax is the score (our choice).
        scores = lengths if self.use_squash else torch.softmax(lengths.float(), dim=1)
        pred = lengths.argmax(dim=1)
        rows = torch.arange(v.shape[0], device=v.device)
        features = v[rows, pred]
        recon = None
        if self.decoder is not None:
            target = y if y is not None else pred
            mask = F.one_hot(target, NUM_CLASSES).to(v.dtype).unsqueeze(-1)
            recon = self.decoder((v * mask).flatten(1))
        return Output(logits=lengths, scores=scores, features=features, reconstruction=recon)

    def loss(self, out: Output, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Margin loss (Eq. 4), or cross-entropy on the lengths, + recon_weight x sum of squared
        reconstruction errors; batch means."""
        return capsule_loss(out, x, y, self.loss_kind, self.recon_weight)


@register_model("capsnet", family="capsule")
def capsnet(*, input_size: int, width: float) -> CapsNet:
    """The paper's model: 3 routing iterations, with the reconstruction decoder."""
    return CapsNet(input_size=input_size, width=width, iterations=3, reconstruction=True)


@register_model("capsnet-r1", family="capsule")
def capsnet_r1(*, input_size: int, width: float) -> CapsNet:
    """Table 1, 'routing 1, reconstruction yes'."""
    return CapsNet(input_size=input_size, width=width, iterations=1, reconstruction=True)


@register_model("capsnet-r1-norecon", family="capsule")
def capsnet_r1_norecon(*, input_size: int, width: float) -> CapsNet:
    """Table 1, 'routing 1, reconstruction no'."""
    return CapsNet(input_size=input_size, width=width, iterations=1, reconstruction=False)


@register_model("capsnet-r3-norecon", family="capsule")
def capsnet_r3_norecon(*, input_size: int, width: float) -> CapsNet:
    """Table 1, 'routing 3, reconstruction no'."""
    return CapsNet(input_size=input_size, width=width, iterations=3, reconstruction=False)


@register_model("capsnet-released-loss", family="capsule")
def capsnet_released_loss(*, input_size: int, width: float) -> CapsNet:
    """The paper's model with the released code's loss balance (reconstruction 20x the paper's)."""
    return CapsNet(input_size=input_size, width=width, recon_weight=RELEASED_RECON_WEIGHT)
