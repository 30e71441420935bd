"""Hand-written loops of published update rules, the independent reference for momentum and SGD runs (the core's in
tests/dynamics/test_sgd.py, the same runs through the HTTP API in tests/api/test_training_methods.py): PyTorch's
``torch.optim.SGD`` (dampening 0) written out from its documentation, on the gradients of docs/theory.md#gradient
(``network.gradients``)."""

from __future__ import annotations

import numpy as np

from service.dynamics import network
from service.dynamics.problem import Problem


def torch_sgd_step(weights, grads, buffers, eta, mu, nesterov, decay):
    """One step of torch.optim.SGD (dampening 0) as its documentation states it, on a list of tensors.

    g ← ∇ + γθ;  b ← g at the first step, else μb + g;  g ← g + μb (nesterov) or b;  θ ← θ − ηg.
    ``buffers`` is None before the first step; returns (weights, buffers).
    """
    new_w, new_b = [], []
    for l, (w, g) in enumerate(zip(weights, grads)):
        g = g + decay * w
        if mu != 0:
            b = g.copy() if buffers is None else mu * buffers[l] + g
            new_b.append(b)
            g = g + mu * b if nesterov else b
        new_w.append(w - eta * g)
    return new_w, (new_b if mu != 0 else None)


def literal_momentum_gd(problem, w0, eta, steps, mu, nesterov, decay):
    ws, buf, states = [w.copy() for w in w0], None, []
    states.append(ws)
    for _ in range(steps):
        ws, buf = torch_sgd_step(ws, network.gradients(problem, ws), buf, eta, mu, nesterov, decay)
        states.append(ws)
    return states


def literal_sgd(problem, w0, eta, batch, steps, seed, mu, nesterov, decay):
    """Every state of SGD by its definition: epoch e's order is the (e+1)-th ``rng.permutation(N)`` of
    ``default_rng(seed)``, batches are consecutive slices of it (the last one the remainder), and a step is the
    PyTorch step with the gradient of the batch loss, ``network.gradients`` on the batch's own correlations."""
    x, y = problem.samples.x, problem.samples.y
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    ws, buf, states, order = [w.copy() for w in w0], None, [], None
    states.append(ws)
    per_epoch = -(-n // batch)
    for k in range(steps):
        if k % per_epoch == 0:
            order = rng.permutation(n)
        rows = order[(k % per_epoch) * batch:][:batch]
        xb, yb = x[rows], y[rows]
        batch_problem = Problem(xb.T @ xb / len(rows), yb.T @ xb / len(rows))
        ws, buf = torch_sgd_step(ws, network.gradients(batch_problem, ws), buf, eta, mu, nesterov, decay)
        states.append(ws)
    return states
