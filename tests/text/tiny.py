"""Builders of tiny random-weight text encoders in the real on-disk formats
(``save_pretrained``): a BertModel, a CLIPTextModel and a T5EncoderModel, width 32, each with
a fast tokenizer built offline from a small word-level vocabulary and saved beside it."""

_TEXT = """
a the of on in under over and with is are big small red blue green
cat cats dog dogs bird tree house mat photo painting sits runs flies sky river
"""
WORDS = tuple(_TEXT.split())

# Per kind: the special tokens (bos/cls first, eos/sep last, pad), the template, and limits.
# BERT's limit comes from its position table (16 < tokenizer's 64), CLIP's from both (10),
# T5's from the tokenizer alone (12; T5 has relative positions).
SPECS = {
    "bert": dict(pad="[PAD]", unk="[UNK]", bos="[CLS]", eos="[SEP]", tok_max=64),
    "clip": dict(pad="<pad>", unk="<unk>", bos="<|startoftext|>", eos="<|endoftext|>", tok_max=10),
    "t5": dict(pad="<pad>", unk="<unk>", bos=None, eos="</s>", tok_max=12),
}
MAX_LENGTH = {"bert": 16, "clip": 10, "t5": 12}


def build_tokenizer(kind, words=WORDS):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    s = SPECS[kind]
    specials = [t for t in (s["pad"], s["unk"], s["bos"], s["eos"]) if t]
    vocab = {w: i for i, w in enumerate(specials + list(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=s["unk"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    single = f"{s['bos']} $A {s['eos']}" if s["bos"] else f"$A {s['eos']}"
    used = [t for t in (s["bos"], s["eos"]) if t]
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(t, vocab[t]) for t in used]
    )
    extra = {"bos_token": s["bos"]} if s["bos"] else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=s["pad"],
        unk_token=s["unk"],
        eos_token=s["eos"],
        model_max_length=s["tok_max"],
        **extra,
    )
    return fast, vocab


def build_model(kind, vocab, seed=None):
    import torch
    import transformers as tf

    torch.manual_seed({"bert": 1, "clip": 2, "t5": 3}[kind] if seed is None else seed)
    s = SPECS[kind]
    if kind == "bert":
        cfg = tf.BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=16,
            pad_token_id=vocab[s["pad"]],
        )
        return tf.BertModel(cfg)
    if kind == "clip":
        cfg = tf.CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=10,
            pad_token_id=vocab[s["pad"]],
            bos_token_id=vocab[s["bos"]],
            eos_token_id=vocab[s["eos"]],
        )
        return tf.CLIPTextModel(cfg)
    cfg = tf.T5Config(
        vocab_size=len(vocab),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        pad_token_id=vocab[s["pad"]],
        eos_token_id=vocab[s["eos"]],
        decoder_start_token_id=vocab[s["pad"]],
    )
    return tf.T5EncoderModel(cfg)


def save_encoder(kind, folder, words=WORDS, seed=None):
    """A tiny encoder of ``kind`` over ``words`` saved to ``folder``; returns the folder."""
    import transformers

    from zigma.text.encoders import quiet

    tokenizer, vocab = build_tokenizer(kind, words)
    with quiet(transformers):
        build_model(kind, vocab, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
