"""Affinity propagation (Frey & Dueck, 2007) in torch: FASA's class clustering without sklearn.

sklearn's semantics (damping, convergence, median preference, tie-breaking noise of
``random_state``, 0 by default), so that the labels equal
``sklearn.cluster.AffinityPropagation``'s on the cases where sklearn converges. Runs on CPU in
float64.
"""

import logging

import numpy as np
import torch

__all__ = ["affinity_propagation", "negative_squared_distances"]

logger = logging.getLogger(__name__)
AP_SEED = 0  # the tie-breaking noise of affinity_propagation
AUTHORS_AP_SEED = 1  # the released FASA code's AffinityPropagation(random_state=1)


def negative_squared_distances(x: torch.Tensor) -> torch.Tensor:
    """(N, N) similarities -||x_i - x_j||^2 in float64 (sklearn's "euclidean" affinity)."""
    x = x.detach().double()
    x2 = (x * x).sum(dim=1)
    d = (x2[:, None] + x2[None, :] - 2.0 * x @ x.T).clamp(min=0)
    d.fill_diagonal_(0)
    return -d


def _median(x: torch.Tensor) -> torch.Tensor:
    """numpy's median: the mean of the two middle values for an even count."""
    v = x.flatten().sort().values
    n = v.numel()
    return (v[(n - 1) // 2] + v[n // 2]) / 2


def _all_equal(S: torch.Tensor, preference: torch.Tensor) -> bool:
    off = S[~torch.eye(S.shape[0], dtype=torch.bool)]
    return bool((off == off[0]).all() and (preference == preference[0]).all())


def affinity_propagation(
    similarity: torch.Tensor,
    damping: float = 0.5,
    max_iter: int = 200,
    convergence_iter: int = 15,
    preference=None,
    random_state: int = AP_SEED,
) -> torch.Tensor:
    """Affinity propagation (Frey & Dueck, Science 2007) with sklearn's semantics.

    Responsibilities and availabilities are exchanged with damping until the set of exemplars
    has not changed for ``convergence_iter`` iterations (or ``max_iter``); each point then joins
    its most similar exemplar, and each cluster's exemplar is refined to the member with the
    largest summed similarity to the others. As sklearn, a tiny perturbation
    (eps * S + 100 * tiny) * N(0, 1) breaks ties; its normals are those of sklearn with
    ``random_state`` (numpy's RandomState(random_state), not the global RNG), so every process
    gets the same labels, and sklearn's. Runs on CPU in float64.

    Args:
        similarity: (N, N) similarities s(i, k), e.g. :func:`negative_squared_distances`.
        damping: in [0.5, 1).
        max_iter, convergence_iter: as sklearn.
        preference: s(k, k), a scalar or (N,); None = the median of ``similarity`` (all N^2
            entries, as sklearn). Larger values give more clusters.
        random_state: the seed of the tie-breaking noise, as sklearn's.

    Returns:
        (N,) int64 labels 0..K-1 (numbered in the order of their exemplars), on CPU; all -1 if
        no exemplar emerged (as sklearn, with a warning).
    """
    if not 0.5 <= damping < 1:
        raise ValueError(f"affinity_propagation: damping {damping} must lie in [0.5, 1).")
    S = similarity.detach().to("cpu", torch.float64).clone()
    n = S.shape[0]
    if S.dim() != 2 or S.shape[1] != n:
        raise ValueError(f"affinity_propagation: similarity must be (N, N); got {tuple(S.shape)}.")
    if n <= 1:
        return torch.zeros(n, dtype=torch.long)
    pref = _median(S) if preference is None else preference
    pref = torch.as_tensor(pref, dtype=torch.float64).expand(n).clone()
    if _all_equal(S, pref):  # nothing to propagate: all singletons or a single cluster
        return torch.arange(n) if pref[0] > S[0, 1] else torch.zeros(n, dtype=torch.long)
    S.diagonal().copy_(pref)
    info = torch.finfo(torch.float64)
    noise = np.random.RandomState(random_state).standard_normal((n, n))  # sklearn's
    S += (info.eps * S + info.tiny * 100) * torch.from_numpy(noise)

    rows = torch.arange(n)
    R, A, tmp = torch.zeros_like(S), torch.zeros_like(S), torch.empty_like(S)
    history = torch.zeros(convergence_iter, n, dtype=torch.bool)
    converged = False
    for it in range(max_iter):
        # responsibilities r(i, k) = s(i, k) - max_{k' != k} (a(i, k') + s(i, k'))
        torch.add(A, S, out=tmp)
        best, best_k = tmp.max(dim=1)
        tmp[rows, best_k] = -float("inf")
        second = tmp.max(dim=1).values
        torch.sub(S, best[:, None], out=tmp)
        tmp[rows, best_k] = S[rows, best_k] - second
        R.mul_(damping).add_(tmp, alpha=1 - damping)
        # availabilities a(i, k) = min(0, r(k, k) + sum_{i' not in {i, k}} max(0, r(i', k))),
        # a(k, k) = sum_{i' != k} max(0, r(i', k))
        torch.clamp(R, min=0, out=tmp)
        tmp.diagonal().copy_(R.diagonal())
        tmp.sub_(tmp.sum(dim=0, keepdim=True)).neg_()
        self_availability = tmp.diagonal().clone()
        tmp.clamp_(max=0).diagonal().copy_(self_availability)
        A.mul_(damping).add_(tmp, alpha=1 - damping)
        exemplar = (A.diagonal() + R.diagonal()) > 0
        history[it % convergence_iter] = exemplar
        if it >= convergence_iter:
            stable = history.sum(dim=0)
            if ((stable == 0) | (stable == convergence_iter)).all() and exemplar.any():
                converged = True
                break
    centres = exemplar.nonzero().squeeze(1)
    if centres.numel() == 0:
        logger.warning("Affinity propagation found no exemplar: every label is -1.")
        return torch.full((n,), -1, dtype=torch.long)
    if not converged:
        logger.warning("Affinity propagation did not converge in %d iterations.", max_iter)
    return _assign(S, centres)


def _assign(S: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Labels from exemplars: join the most similar exemplar, refine each exemplar to the
    member most similar to its cluster, join again, number the clusters 0..K-1."""
    k = centres.numel()
    c = S[:, centres].argmax(dim=1)
    c[centres] = torch.arange(k)
    for j in range(k):
        members = (c == j).nonzero().squeeze(1)
        centres[j] = members[S[members][:, members].sum(dim=0).argmax()]
    c = S[:, centres].argmax(dim=1)
    c[centres] = torch.arange(k)
    return torch.unique(centres[c], return_inverse=True)[1]
