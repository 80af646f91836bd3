"""Session fixtures: the tiny encoders of ``tiny.py`` saved to temporary folders."""

import pytest
from tests.text.tiny import SPECS, build_model, build_tokenizer


@pytest.fixture(scope="session")
def encoder_dirs(tmp_path_factory):
    """{kind: folder} for "bert", "clip", "t5" (skips when transformers is missing)."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("text_encoders")
    dirs = {}
    for kind in SPECS:
        tokenizer, vocab = build_tokenizer(kind)
        model = build_model(kind, vocab)
        dirs[kind] = root / kind
        model.save_pretrained(dirs[kind])
        tokenizer.save_pretrained(dirs[kind])
    return dirs


@pytest.fixture(scope="session")
def encoders(encoder_dirs):
    """{kind: HFTextEncoder} loaded once per session through the code under test."""
    from zigma.text import HFTextEncoder

    return {kind: HFTextEncoder.from_directory(d) for kind, d in encoder_dirs.items()}
