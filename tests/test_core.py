"""Fast unit tests of the tensor core: splicing, label masks, padding, connectors, chat masks,
data order, generation (batch vs one by one, streaming deltas, the chat's KV cache).

A tiny model built in-process (toy-av tokenizer, 1-layer Llama of width 32, an MLP projector for
video and a Q-Former for audio), and the same model taught one answer (so that the chat tests
check known, non-empty tokens): every test runs in well under a second.
"""

from __future__ import annotations

import pytest
import torch

from greedy import generate
from vlm_cli.errors import DataError
from vlm_cli.model.chat import IGNORE_INDEX, encode_conversation, encode_prompt
from vlm_cli.model.vlm import MediaInput, Prefix, VideoLanguageModel
from vlm_cli.recipe import ConnectorSpec, LLMSpec, ModelSpec

D_VISION, D_AUDIO, T, N = 8, 6, 3, 4
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
         "max_position_embeddings": 512}


def build_model() -> VideoLanguageModel:
    from vlm_cli.model.llm import build_llm
    from vlm_cli.model.tokenizer import load_tokenizer

    spec = ModelSpec(video_connector=ConnectorSpec(type="mlp"),
                     audio_connector=ConnectorSpec(type="qformer", num_query_tokens=2,
                                                   num_layers=1, num_heads=2, hidden_size=16,
                                                   max_positions=8),
                     llm=LLMSpec(config=LLAMA, tokenizer="toy-av", dtype="float32"))
    tokenizer = load_tokenizer(spec.llm)
    torch.manual_seed(0)
    llm = build_llm(spec.llm, tokenizer)
    vlm = VideoLanguageModel(spec, llm, tokenizer, {"vision": D_VISION, "audio": D_AUDIO})
    return vlm.eval()


@pytest.fixture(scope="module")
def model() -> VideoLanguageModel:
    return build_model()


#: What :func:`taught` answers about ``clip(0)``, whatever the question.
ANSWER = "a high tone"


@pytest.fixture(scope="module")
def taught() -> VideoLanguageModel:
    """The tiny model taught to answer :data:`ANSWER` about ``clip(0)``, to a first question
    and to a follow-up (AdamW on two conversations until both are learnt): its greedy answers
    are known, non-empty tokens."""
    vlm = build_model().train()
    chats = [[{"from": "human", "value": "<video>\nwhat sound is playing ?"},
              {"from": "gpt", "value": ANSWER}]]
    chats.append(chats[0] + [{"from": "human", "value": "what colour is it ?"},
                             {"from": "gpt", "value": ANSWER}])
    encoded = [encode_conversation(vlm.tokenizer, chat, max_length=128) for chat in chats]
    optimizer = torch.optim.AdamW(vlm.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(100):
        loss, n = vlm([ids for ids, _ in encoded], [labels for _, labels in encoded],
                      [[clip(0)] for _ in encoded])
        (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert (loss / n).item() < 0.05  # learnt
    return vlm.eval()


def clip(seed: int, audio: bool = True, frames: int = T) -> MediaInput:
    g = torch.Generator().manual_seed(seed)
    return MediaInput(vision=torch.randn(frames, N, D_VISION, generator=g),
                      audio=torch.randn(2, D_AUDIO, generator=g) if audio else None)


def prompt(model, question: str = "what sound is playing ?") -> list[int]:
    return encode_prompt(model.tokenizer, [{"from": "human", "value": f"<video>\n{question}"}])


# --- splicing ----------------------------------------------------------------------------------

def test_placeholders_expand_to_soft_prompt_rows_video_then_audio(model):
    ids = prompt(model)
    media = [clip(0), clip(1, audio=False)]
    rows, labels = model.expand([ids, ids], [[m] for m in media], [ids, ids])
    prompts = model.soft_prompts(media)
    assert model.prompt_lengths(media) == [p.shape[0] for p in prompts]
    video = model.tokenizer.convert_tokens_to_ids("<video>")
    assert [p.shape for p in prompts] == [(T * N + 2, 32), (T * N, 32)]  # MLP rows + 2 queries
    assert rows[0].count(video) == T * N + 2 and rows[1].count(video) == T * N
    assert len(rows[0]) == len(ids) - 1 + T * N + 2
    for row, lab in zip(rows, labels):  # labels: ignored on every placeholder copy
        assert all(l == IGNORE_INDEX for t, l in zip(row, lab) if t == video)
        assert [l for t, l in zip(row, lab) if t != video] == [t for t in ids if t != video]


@pytest.mark.parametrize("side", ["left", "right"])
def test_embed_puts_soft_prompts_in_place_for_a_mixed_batch(model, side):
    ids, short = prompt(model), prompt(model, "what colour ?")
    media = [[clip(0)], [clip(1, audio=False)]]
    embeds, mask, labels = model.embed([ids, short], media, [ids, short], padding_side=side)
    prompts = model.soft_prompts([m for (m,) in media])
    table = model.llm.get_input_embeddings()
    video = model.tokenizer.convert_tokens_to_ids("<video>")
    for b, (row, soft) in enumerate(zip([ids, short], prompts)):
        n = len(row) - 1 + soft.shape[0]
        assert int(mask[b].sum()) == n
        real = mask[b].bool()
        assert real[:n].all() if side == "right" else real[-n:].all()
        got = embeds[b][real]
        j = row.index(video)
        assert torch.allclose(got[:j], table(torch.tensor(row[:j])))
        assert torch.allclose(got[j:j + soft.shape[0]], soft)
        assert torch.allclose(got[j + soft.shape[0]:], table(torch.tensor(row[j + 1:])))
        assert (labels[b][~real] == IGNORE_INDEX).all()  # padding carries no loss


def test_placeholder_and_media_counts_must_match(model):
    with pytest.raises(DataError, match="1 media placeholders but 2 media files"):
        model.embed([prompt(model)], [[clip(0), clip(1)]])
    ids, mask, _ = model.pad([[1, 2, 3]])
    with pytest.raises(DataError, match="media tokens: 0, soft-prompt rows: 5"):
        model.scatter(ids, mask, torch.zeros(1, 3, 32), [torch.zeros(5, 32)])


def test_loss_counts_only_assistant_tokens(model):
    turns = [{"from": "human", "value": "<video>\nwhat sound is playing ?"},
             {"from": "gpt", "value": "a high tone"}]
    ids, labels = encode_conversation(model.tokenizer, turns, max_length=128)
    loss, n = model([ids], [labels], [[clip(0)]])
    targets = sum(l != IGNORE_INDEX for l in labels[1:])
    assert int(n) == targets == len(model.tokenizer("a high tone")["input_ids"]) + 1  # + </s>
    assert loss.item() > 0


# --- chat masks --------------------------------------------------------------------------------

def test_chat_assistant_mask_over_turns_and_bos(model):
    tok = model.tokenizer
    turns = [{"from": "human", "value": "<video>\nwhat colour ?"}, {"from": "gpt", "value": "red"},
             {"from": "human", "value": "what shape ?"}, {"from": "gpt", "value": "a circle"}]
    ids, labels = encode_conversation(tok, turns, max_length=128)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    targets = [t for t, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert tok.decode(targets, skip_special_tokens=False).split() == \
        ["red", "</s>", "a", "circle", "</s>"]  # every assistant turn, nothing else
    with pytest.raises(DataError):
        encode_conversation(tok, turns[:1], max_length=128)  # no assistant turn
    assert encode_prompt(tok, turns[:1])[0] == tok.bos_token_id


# --- connectors --------------------------------------------------------------------------------

def test_connector_shapes_and_masked_frames(model):
    mlp, qformer = model.connectors["video"], model.connectors["audio"]
    feats = torch.randn(2, T, N, D_VISION)
    assert mlp(feats).shape == (2, T * N, 32) and mlp.num_tokens(T, N) == T * N
    audio = torch.randn(2, 4, 1, D_AUDIO)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        out = qformer(audio, mask)
        changed = audio.clone()
        changed[0, 2:] = 100.0  # masked clips must not change the queries
        again = qformer(changed, mask)
    assert out.shape == (2, 2, 32) and qformer.num_tokens(4, 1) == 2
    assert torch.allclose(out[0], again[0], atol=1e-6)


# --- data order --------------------------------------------------------------------------------

def test_data_order_is_a_pure_function_of_the_step():
    from vlm_cli.train.order import global_batch, shard, total_steps

    batches = [global_batch(10, 4, seed=3, step=s) for s in range(5)]
    assert batches == [global_batch(10, 4, seed=3, step=s) for s in range(5)]  # resumable
    assert sorted(batches[0] + batches[1] + batches[2][:2]) == list(range(10))  # epoch 0 whole
    assert global_batch(10, 4, seed=4, step=0) != batches[0]
    assert shard([0, 1, 2, 3, 4, 5, 6, 7], rank=1, world=2, micro_batches=2) == [[4, 5], [6, 7]]
    assert total_steps(10, 4, epochs=1.0, max_steps=None) == 3


# --- generation --------------------------------------------------------------------------------

def test_batch_gives_the_same_tokens_as_one_by_one(model):
    prompts = [prompt(model), prompt(model, "what colour is the shape ?"),
               prompt(model, "describe the clip")]
    media = [[clip(0)], [clip(1, audio=False)], [clip(2, frames=1)]]
    one_by_one = [generate(model, p, m, max_new_tokens=6) for p, m in zip(prompts, media)]
    assert model.generate_batch(prompts, media, max_new_tokens=6) == one_by_one
    assert any(one_by_one)


def test_stream_yields_eos_once_then_none(model):
    eos = model.tokenizer.eos_token_id
    steps = list(model.stream([prompt(model)], [[clip(0)]], max_new_tokens=12))
    tokens = [t for (t,) in steps]
    assert None not in tokens and (eos not in tokens or tokens[-1] == eos)
    forced = list(model.stream([prompt(model)], [[clip(0)]], max_new_tokens=12, ignore_eos=True))
    assert len(forced) == 12


def test_streaming_deltas_add_up_to_the_answer(taught):
    from vlm_cli.pipeline import ChatSession

    deltas: list[str] = []
    session = ChatSession(taught, clip(0), "<video>")
    answer = session.ask("what sound is playing ?", max_new_tokens=8, on_text=deltas.append)
    assert answer.text == ANSWER and "".join(deltas).strip() == ANSWER
    assert answer.tokens == len(taught.tokenizer(ANSWER, add_special_tokens=False)
                                ["input_ids"])


def test_chat_keeps_the_kv_cache_of_earlier_turns(taught):
    """The second turn gives the same tokens as a fresh full prefill (the known answer), but
    prefills only the new tokens (not the soft prompt again)."""
    from vlm_cli.pipeline import ChatSession

    model = taught
    session = ChatSession(model, clip(0), "<video>")
    first = session.ask("what sound is playing ?", max_new_tokens=6)
    calls = []
    hook = model.connectors["video"].register_forward_hook(lambda *_: calls.append(1))
    second = session.ask("what colour is it ?", max_new_tokens=6)
    hook.remove()
    assert calls == []  # the follow-up neither prefills nor recomputes the soft prompt
    assert first.text == second.text == ANSWER
    turns = session.turns[:-1]
    fresh = generate(model, encode_prompt(model.tokenizer, turns), [clip(0)], max_new_tokens=6)
    assert model.tokenizer.decode(fresh, skip_special_tokens=True).strip() == ANSWER
    full = first.prefill_tokens
    assert full >= T * N + 2 and second.prefill_tokens < full - T * N
    session.reset()
    assert session.ask("what sound is playing ?", max_new_tokens=6).prefill_tokens == full


def test_prefix_reuse_needs_every_media_token():
    prefix = Prefix(media_ids={9}, ids=[1, 9, 9, 5, 6], cache=object())
    assert prefix.reusable([[1, 9, 9, 5, 7, 8]]) == 4
    assert prefix.reusable([[1, 9, 9, 5, 6]]) == 4  # at least one token is prefilled
    assert prefix.reusable([[1, 9, 4, 9]]) == 0  # the cache stops before the last media token
    assert prefix.reusable([[1, 9], [1, 9]]) == 0  # a batch: no reuse


def test_shipped_toy_av_tokenizer_is_the_built_one():
    """The toy-av tokenizer ships as an ordinary tokenizer directory; it must not drift from the
    vocabulary of the toy world (regenerate: python -m vlm_cli.toyav.tokenizer)."""
    from vlm_cli.model.tokenizer import load_tokenizer
    from vlm_cli.toyav.tokenizer import build_toy_av_tokenizer

    built = build_toy_av_tokenizer()
    shipped = load_tokenizer(LLMSpec(config=LLAMA, tokenizer="toy-av"))
    assert shipped.get_vocab() == built.get_vocab()
    text = "USER: <video>\nWhat sound is playing? ASSISTANT: a HIGH tone, zebra</s>"
    assert shipped(text)["input_ids"] == built(text)["input_ids"]
    assert shipped.decode(built(text)["input_ids"]) == built.decode(built(text)["input_ids"])
