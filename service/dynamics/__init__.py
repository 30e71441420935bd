"""dlnsim's numerical core: learning dynamics of deep linear networks y = W_D ⋯ W_1 x.

Plain numpy/scipy (numba for the small-network GD loop), no web imports. One concept per module:

    problem    Σ11, Σ31, Σ33 from data (chunked) or given; validation errors with field paths
    network    network map, loss, gradients of every layer, balance W_{l+1}ᵀW_{l+1} − W_l W_lᵀ
    init       initial conditions (gaussian, orthogonal, balanced, lambda_balanced, aligned, given)
    gd, flow   the simulated methods (gd_loop: the compiled GD loop); exact: closed forms (Saxe modes, Riccati, shallow)
    sgd        GD with momentum and mini-batch SGD, PyTorch's torch.optim.SGD (sgd_loop: their compiled loop)
    sharpness  top Hessian eigenvalues of L and the edge-of-stability threshold (hessian_loop: product, Lanczos)
    modes      SVD of Σ31, mode strengths, reduced-rank optimum, learning times; theory: overlays
    record     the record schedule; trajectory: what a run returns; simulate: the one entry point
    sequence   task sequences: one run over phases (problem, until), for continual learning and transfer
    linearized the loss of the network linearised at its init (the lazy limit as theory)
    random_matrix  Lampinen & Ganguli's sample-free theory of train and test loss for a noisy teacher
        presets    built-in problems (PNAS 2019 hierarchy, branching diffusion, whitened, random/noisy teacher)
    methods    the settings of each method and a simulated run's raw result; batch: many runs stepped together
    ntk        the NTK's Grams and kernel distance; similarity: hidden-layer item similarity
    generalization  test loss, early stopping and the mode theory of train and test loss
    errors     one exception family, each naming the input field and the fix

Conventions (docs/theory.md#conventions): L = (1/N) Σ ‖y − W x‖², t = η·step (GD, SGD),
dW_l/dt = −∂L/∂W_l.
"""
