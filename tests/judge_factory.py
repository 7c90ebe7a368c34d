"""Tiny local judge LLMs for `vlm eval --judge` tests: a 2-layer Llama with a word-level
tokenizer (covering the real judge prompt) and a Vicuna-style chat template.

:func:`make_constant_judge` sets the weights by hand so that greedy decoding always replies with
one verdict, whatever the prompt: the attention and MLP outputs are zero (the residual stream is
the current token's embedding), every token embeds to e0 except the verdict token (e1), and the
LM head maps e0 to the verdict and e1 to ``</s>``. Each verdict is one non-special added token, so
it decodes to exactly its JSON text. :func:`make_random_judge` replies with noise (no valid
verdict)."""

from __future__ import annotations

import re
from pathlib import Path

YES = '{"pred": "yes", "score": 5}'
NO = '{"pred": "no", "score": 0}'
WORDS = ("red green blue yellow purple circle square triangle star cross left right up down "
         "high tone low tone buzz chirp silence").split()
QUESTIONS = ("What colour is the shape?", "What sound is playing?", "Which way does it move?",
             "What shape is it?")
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
            "{{ m['content'] }} {% elif m['role'] == 'user' %}USER: {{ m['content'] }} "
            "{% else %}ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def build_tokenizer():
    """Word-level tokenizer over the judge prompt, the toy answers and the two verdicts."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from vlm_cli.eval.judge import SYSTEM_PROMPT, USER_PROMPT

    text = " ".join([SYSTEM_PROMPT, USER_PROMPT, *WORDS, *QUESTIONS, "USER: ASSISTANT:"])
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    core.add_tokens([AddedToken(YES, normalized=False), AddedToken(NO, normalized=False)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>")
    tok.chat_template = TEMPLATE
    return tok


def _config(tok):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=512, tie_word_embeddings=False,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)


def make_constant_judge(out_dir: Path, verdict: str = YES) -> Path:
    """Save (``save_pretrained``: safetensors + tokenizer) a judge whose greedy reply is always
    ``verdict`` (:data:`YES` or :data:`NO`)."""
    import torch
    from transformers import LlamaForCausalLM

    tok = build_tokenizer()
    model = LlamaForCausalLM(_config(tok))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.get_input_embeddings().weight
        embed.zero_()
        embed[:, 0] = 1.0
        v = tok.convert_tokens_to_ids(verdict)
        embed[v, 0], embed[v, 1] = 0.0, 1.0
        head = model.lm_head.weight
        head.zero_()
        head[v, 0] = 1.0
        head[tok.eos_token_id, 1] = 1.0
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def make_random_judge(out_dir: Path, *, seed: int = 0, chat_template: bool = True) -> Path:
    """Save a randomly initialised judge (its replies are not verdicts); without
    ``chat_template`` its tokenizer has none."""
    import torch
    from transformers import LlamaForCausalLM

    tok = build_tokenizer()
    if not chat_template:
        tok.chat_template = None
    torch.manual_seed(seed)
    LlamaForCausalLM(_config(tok)).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
