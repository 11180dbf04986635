"""Soft-DTW (placeholder until the operator lands)."""


def pairwise_cost(x, y, kind="cosine"):
    raise NotImplementedError


def soft_dtw(cost, gamma, *, x_mask=None, y_mask=None, bandwidth=None):
    raise NotImplementedError


def soft_dtw_divergence(x, y, gamma, *, x_mask=None, y_mask=None, cost="cosine", cross_penalty=None):
    raise NotImplementedError
