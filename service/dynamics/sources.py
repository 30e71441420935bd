"""Where each theory overlay comes from: its paper, with a DOI, and the section of docs/theory.md that states it.

    theory_source("saxe_decoupled_modes")   # -> "Saxe, McClelland & Ganguli 2014 … doi:10.48550/arXiv.1312.6120 …"

Every model name an overlay reports (``ModeReport.theory_model``, ``LossTheory.model``) maps to a source here;
tests/dynamics/test_sources.py checks that each model the core can name has one.
"""

from __future__ import annotations

# key -> (citation with DOI, docs/theory.md anchor)
PAPERS: dict[str, tuple[str, str]] = {
    "saxe2014": ("Saxe, McClelland & Ganguli 2014, Exact solutions to the nonlinear dynamics of learning in deep "
                 "linear neural networks, ICLR, doi:10.48550/arXiv.1312.6120", "saxe-two-layer"),
    "saxe2014_deep": ("Saxe, McClelland & Ganguli 2014, Exact solutions to the nonlinear dynamics of learning in deep "
                      "linear neural networks, ICLR, doi:10.48550/arXiv.1312.6120", "saxe-deep"),
    "braun2022": ("Braun, Dominé, Fitzgerald & Saxe 2022, Exact learning dynamics of deep linear networks with prior "
                  "knowledge, J. Stat. Mech. 2023 114004, doi:10.1088/1742-5468/ad01b8", "riccati"),
    "domine2024": ("Dominé, Anguita, Proca, Braun, Kunin, Mediano & Saxe 2024, From lazy to rich: exact learning "
                   "dynamics in deep linear networks, ICLR 2025, doi:10.48550/arXiv.2409.14623", "riccati"),
    "lampinen2019": ("Lampinen & Ganguli 2019, An analytic theory of generalization dynamics and transfer learning in "
                     "deep linear networks, ICLR, doi:10.48550/arXiv.1809.10374", "generalization"),
    "regression": ("Linear regression's gradient dynamics, solved in the eigenbasis of Σ11 (textbook; no paper)",
                   "exact-gd-shallow"),
}

# model name prefix -> paper key (the longest matching prefix wins)
_MODELS: dict[str, str] = {
    "saxe_deep": "saxe2014_deep",
    "saxe": "saxe2014",
    "gd_map": "saxe2014",
    "riccati_lambda": "domine2024",
    "riccati": "braun2022",
    "shallow": "regression",
    "modes_generalization": "lampinen2019",
    "random_matrix": "lampinen2019",
}


def theory_source(model: str | None) -> str | None:
    """The paper (with its DOI) and the docs/theory.md section of theory model ``model``; None for no model."""
    if model is None:
        return None
    prefix = max((p for p in _MODELS if model.startswith(p)), key=len, default=None)
    if prefix is None:
        return None
    citation, anchor = PAPERS[_MODELS[prefix]]
    return f"{citation}; docs/theory.md#{anchor}"
