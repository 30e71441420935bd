"""Every theory overlay names its paper with a DOI (service/dynamics/sources.py)."""

from __future__ import annotations

import re

import pytest

from service.dynamics import random_matrix
from service.dynamics.exact import dispatch
from service.dynamics.sources import PAPERS, theory_source

# every model name the core's overlays report (theory.py, exact/dispatch.py, random_matrix.py)
MODELS = ["shallow_gd_map", dispatch.MODEL_SHALLOW, "gd_map_decoupled_modes", dispatch.MODEL_MODES,
          dispatch.MODEL_DEEP, dispatch.MODEL_RICCATI, "saxe_small_init", "saxe_deep_small_init",
          "modes_generalization", random_matrix.MODEL]


@pytest.mark.parametrize("model", MODELS)
def test_every_theory_model_names_its_source_and_a_section_of_the_theory_document(model):
    source = theory_source(model)
    assert source is not None and re.search(r"docs/theory\.md#[a-z-]+$", source)


def test_every_paper_but_the_textbook_has_a_doi():
    for key, (citation, _) in PAPERS.items():
        assert ("doi:10." in citation) != (key == "regression"), key


def test_every_anchor_exists_in_the_theory_document():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "theory.md").read_text()
    for _, anchor in PAPERS.values():
        assert f'<a id="{anchor}"></a>' in text, anchor


def test_the_deep_models_cite_the_deep_section():
    assert theory_source(dispatch.MODEL_DEEP).endswith("#saxe-deep")
    assert theory_source("saxe_small_init").endswith("#saxe-two-layer")
