"""The graph builders' one entry point: a safetensors model -> its ONNX encoder graph, built in memory.

The BERT family (BERT, RoBERTa, XLM-R, CamemBERT, DistilBERT, MPNet) is built by `bert_graph`, the rotary
families (ModernBERT, NomicBERT, GTE, Qwen3, EmbeddingGemma) by `rotary_graph` on bert_graph's pieces.
"""

from __future__ import annotations

from embtool.core.model import ROTARY, Model
from embtool.runtime.bert_graph import BuiltGraph, build_bert, detect_bert
from embtool.runtime.rotary_graph import build_rotary, detect_rotary


def _rotary(model: Model) -> bool:
    return str(model.config.get("model_type", "")).lower() in ROTARY


def detect_arch(model: Model):
    """The architecture description the builder will use; Unsupported / CorruptFile when it cannot build the model."""
    return detect_rotary(model) if _rotary(model) else detect_bert(model)


def build_encoder(model: Model, fused: bool = True, feed_weights: frozenset[str] = frozenset(),
                  capture_linear_inputs: bool = False) -> BuiltGraph:
    """The encoder graph: inputs input_ids, attention_mask [batch, seq] int64; output last_hidden_state
    [batch, seq, hidden] float32 (see bert_graph.build_bert for the options)."""
    if _rotary(model):
        return build_rotary(model, fused, feed_weights, capture_linear_inputs)
    return build_bert(model, fused, feed_weights, capture_linear_inputs)
