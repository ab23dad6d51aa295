"""Tiny random-weight look-alikes of EmbeddingGemma and Qwen3-Embedding, built at test time.

Same architecture families, pooling, dense heads and prompt names as the real models, a few
hundred kilobytes of weights, built in about a second. Their embeddings mean nothing; their
prompts, tokenisation and module layout behave like the real thing.
"""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "task search result query title none text sentence similarity classification clustering code retrieval "
    "summarization instruct given a web retrieve relevant passages that answer the which metal is liquid at room "
    "temperature mercury gallium aluminium planet red mars venus jupiter saturn train leaves nine cat slept on warm "
    "windowsill password reset billing address latency throughput batch memory model vector encode profile"
).split()

# EmbeddingGemma's prompt names and texts (config_sentence_transformers.json of google/embeddinggemma-300m).
GEMMA_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}

QWEN_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": "",
}


def _tokenizer(bos: bool) -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in sorted(set(WORDS + [c for c in "abcdefghijklmnopqrstuvwxyz:|?.,!"])):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
        )
    else:
        tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", vocab["<eos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=128,
        padding_side="right" if bos else "left",
    )


def build_tiny_embeddinggemma(dest: Path) -> Path:
    """Gemma3TextModel + mean pooling + Dense(h→4h) + Dense(4h→h) + Normalize, EmbeddingGemma's prompts."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as stm
    from transformers import Gemma3TextConfig, Gemma3TextModel

    if (dest / "modules.json").exists():
        return dest
    hf = dest.parent / (dest.name + "-hf")
    tokenizer = _tokenizer(bos=True)
    torch.manual_seed(0)
    h = 32
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=h,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    Gemma3TextModel(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    transformer = stm.Transformer(str(hf), max_seq_length=64)
    modules = [
        transformer,
        stm.Pooling(h, "mean"),
        stm.Dense(h, 4 * h, bias=False, activation_function=torch.nn.Identity()),
        stm.Dense(4 * h, h, bias=False, activation_function=torch.nn.Identity()),
        stm.Normalize(),
    ]
    model = SentenceTransformer(modules=modules, prompts=GEMMA_PROMPTS, similarity_fn_name="cosine", device="cpu")
    model.save(str(dest))
    return dest


def build_tiny_qwen3_embedding(dest: Path) -> Path:
    """Qwen3Model + last-token pooling + Normalize, with an `Instruct: …\\nQuery:` query prompt."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as stm
    from transformers import Qwen3Config, Qwen3Model

    if (dest / "modules.json").exists():
        return dest
    hf = dest.parent / (dest.name + "-hf")
    tokenizer = _tokenizer(bos=False)
    torch.manual_seed(0)
    h = 32
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=h,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
    )
    Qwen3Model(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    modules = [stm.Transformer(str(hf), max_seq_length=64), stm.Pooling(h, "lasttoken"), stm.Normalize()]
    model = SentenceTransformer(modules=modules, prompts=QWEN_PROMPTS, similarity_fn_name="cosine", device="cpu")
    model.save(str(dest))
    return dest
