"""TextFeatureCache: round trips against the encoder, padding, identity checks, reopening."""

import hashlib
import json
import re

import pytest
import torch

from zigma.artifacts import ArtifactError
from zigma.text import TextFeatureCache, caption_key

CAPTIONS = ["a red cat", "the big dog sits on a mat", "photo of a bird", "a blue house"]


def _shards(directory):
    return sorted(p.name for p in directory.glob("shard-*.safetensors"))


def test_round_trip_matches_encode(encoders, tmp_path):
    enc = encoders["t5"]
    cache = TextFeatureCache(tmp_path / "c", enc.identity())
    assert len(cache) == 0 and cache.missing(CAPTIONS) == CAPTIONS
    assert cache.add(CAPTIONS, enc, batch_size=3) == 4
    assert len(cache) == 4 and all(c in cache for c in CAPTIONS) and "a dog" not in cache
    tokens, mask = cache.lookup(CAPTIONS)
    ref, ref_mask = enc.encode(CAPTIONS)
    assert tokens.dtype == torch.float32 and torch.equal(mask, ref_mask)
    torch.testing.assert_close(tokens, ref, rtol=1e-3, atol=2e-3)  # stored as fp16
    assert (tokens[~mask] == 0).all()


def test_entries_are_trimmed_and_keyed_by_sha256(encoders, tmp_path):
    from safetensors import safe_open

    enc = encoders["bert"]
    cache = TextFeatureCache(tmp_path, enc.identity())
    cache.add(CAPTIONS, enc)
    _, mask = enc.encode(CAPTIONS)
    (shard,) = _shards(tmp_path)
    with safe_open(str(tmp_path / shard), framework="pt") as f:
        for caption, m in zip(CAPTIONS, mask, strict=True):
            t = f.get_tensor(caption_key(caption))
            assert t.dtype == torch.float16 and t.shape == (int(m.sum()), 32)
    assert caption_key("é") == hashlib.sha256("é".encode()).hexdigest()


def test_add_encodes_only_new_captions(encoders, tmp_path):
    enc = encoders["bert"]
    cache = TextFeatureCache(tmp_path, enc.identity())
    assert cache.add(CAPTIONS[:2] + CAPTIONS[:1], enc) == 2  # duplicates count once
    assert cache.add(CAPTIONS[:2], enc) == 0
    assert _shards(tmp_path) == ["shard-00000.safetensors"]  # nothing new: no shard written
    assert cache.missing(CAPTIONS) == CAPTIONS[2:]
    assert cache.add(CAPTIONS, enc) == 2
    assert _shards(tmp_path) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    manifest = json.loads((tmp_path / "cache.json").read_text())
    assert manifest["shards"] == _shards(tmp_path) and manifest["identity"] == enc.identity()
    tokens, _ = cache.lookup(CAPTIONS)
    torch.testing.assert_close(tokens, enc.encode(CAPTIONS)[0], rtol=1e-3, atol=2e-3)


def test_reopening_reads_the_same_features(encoders, tmp_path):
    enc = encoders["clip"]
    first = TextFeatureCache(tmp_path, enc.identity(), dtype=torch.float32)
    first.add(CAPTIONS[:3], enc)
    first.add(CAPTIONS[3:], enc)
    again = TextFeatureCache.open(tmp_path)
    assert again.identity == enc.identity() and len(again) == 4
    tokens, mask = again.lookup(CAPTIONS)
    ref, ref_mask = enc.encode(CAPTIONS)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(tokens, ref, rtol=1e-5, atol=1e-6)  # float32 storage
    # Constructing with the same encoder's identity reopens too.
    assert len(TextFeatureCache(tmp_path, enc.identity())) == 4


def test_lookup_pads_right_and_cuts_to_length(encoders, tmp_path):
    enc = encoders["bert"]
    cache = TextFeatureCache(tmp_path, enc.identity())
    cache.add(CAPTIONS, enc)
    tokens, mask = cache.lookup(CAPTIONS)
    lengths = mask.sum(1)
    assert tokens.shape[1] == int(lengths.max())
    for i, n in enumerate(lengths.tolist()):  # real tokens first, padding after
        assert mask[i, :n].all() and not mask[i, n:].any()
    wide, wide_mask = cache.lookup(CAPTIONS, length=20)
    assert wide.shape == (4, 20, 32) and torch.equal(wide_mask[:, : mask.shape[1]], mask)
    assert not wide_mask[:, mask.shape[1] :].any() and (wide[:, mask.shape[1] :] == 0).all()
    torch.testing.assert_close(wide[:, : mask.shape[1]], tokens, rtol=0, atol=0)
    short, short_mask = cache.lookup(CAPTIONS, length=4)
    assert short.shape == (4, 4, 32) and torch.equal(short_mask, mask[:, :4])
    torch.testing.assert_close(short, tokens[:, :4], rtol=0, atol=0)
    one, _ = cache.lookup([CAPTIONS[1]], device="cpu")
    torch.testing.assert_close(one[0], tokens[1], rtol=0, atol=0)


def test_missing_caption_names_it(encoders, tmp_path):
    enc = encoders["bert"]
    cache = TextFeatureCache(tmp_path, enc.identity())
    cache.add(CAPTIONS[:1], enc)
    with pytest.raises(ValueError, match=r"1 of 2 captions.*'a dog runs'.*add\("):
        cache.lookup([CAPTIONS[0], "a dog runs"])
    with pytest.raises(ValueError, match="empty prompt"):
        cache.lookup([""])
    with pytest.raises(ValueError, match="length"):
        cache.lookup(CAPTIONS[:1], length=0)


def test_another_encoders_cache_is_refused(encoders, tmp_path):
    bert, clip = encoders["bert"], encoders["clip"]
    cache = TextFeatureCache(tmp_path, bert.identity())
    cache.add(CAPTIONS, bert)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    a, b = bert.weights_hash[:8], clip.weights_hash[:8]
    message = f"cache {tmp_path} was written by encoder bert (hash {a}..), not clip (hash {b}..)"
    with pytest.raises(ValueError, match=re.escape(message)):
        TextFeatureCache(tmp_path, clip.identity())
    with pytest.raises(ValueError, match="written by encoder bert"):
        cache.add(["a green tree"], clip)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_orphan_shard_of_a_crashed_add_is_replaced(encoders, tmp_path):
    enc = encoders["bert"]
    cache = TextFeatureCache(tmp_path, enc.identity())
    (tmp_path / "shard-00000.safetensors").write_bytes(b"half written")  # not in the manifest
    reopened = TextFeatureCache.open(tmp_path)
    assert len(reopened) == 0
    assert reopened.add(CAPTIONS, enc) == 4
    assert len(TextFeatureCache.open(tmp_path)) == 4
    assert len(cache) == 0  # an older handle does not see others' writes; reopen to refresh


def test_damaged_caches_are_refused(encoders, tmp_path):
    with pytest.raises(FileNotFoundError, match="no cache.json"):
        TextFeatureCache.open(tmp_path)
    enc = encoders["bert"]
    TextFeatureCache(tmp_path, enc.identity()).add(CAPTIONS, enc)
    (tmp_path / "shard-00000.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing shards"):
        TextFeatureCache.open(tmp_path)
    (tmp_path / "cache.json").write_text('{"format": "something else"}')
    with pytest.raises(ArtifactError, match="not a version-1 zigma text cache"):
        TextFeatureCache.open(tmp_path)
    with pytest.raises(ValueError, match="lacks"):
        TextFeatureCache(tmp_path / "new", {"name": "x"})
