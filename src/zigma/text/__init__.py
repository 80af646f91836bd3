"""Text encoders (caption -> token features) and an on-disk text-feature cache.

``transformers`` is imported only when an encoder is loaded (``pip install 'zigma[text]'``);
the cache needs only safetensors, so a GPU machine can train from cached features alone.
"""

from zigma.text.cache import TextFeatureCache, caption_key
from zigma.text.encoders import (
    HFTextEncoder,
    TextEncoder,
    check_captions,
    encoder_dim,
    load_text_encoder,
    minilm,
    spec_weights_hash,
)

__all__ = [
    "HFTextEncoder",
    "TextEncoder",
    "TextFeatureCache",
    "caption_key",
    "check_captions",
    "encoder_dim",
    "load_text_encoder",
    "minilm",
    "spec_weights_hash",
]
