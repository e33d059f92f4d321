"""Token sequences through the one engine: TokenWindows / Words, TokenMask / AttentionMask, scores, HTML."""

from __future__ import annotations

from typing import ClassVar

import matplotlib
import pytest
import torch
from torch import nn

from pami_lightning import PAMI, AttentionMask, Blur, ModelCall, SlidingWindow, TokenMask, TokenWindows, Words, caption_word_score, word_ids_from_tokens
from pami_lightning.visualize import highlight_tokens, highlight_tokens_image

PAD, MASK, KEY = 0, 1, 7


def _key_token_model(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Known answer: logits [4 * (KEY attended) - 2, 0]; nothing but token KEY matters."""
    seen = input_ids == KEY
    if attention_mask is not None:
        seen &= attention_mask.bool()
    p = seen.any(dim=1).float()
    return torch.stack([4 * p - 2, torch.zeros_like(p)], dim=1)


#: A pure function: no module to put in eval mode (modules=() says so and silences the warning).
key_token_model = ModelCall(_key_token_model, modules=())


class BagModel(nn.Module):
    """A random bag-of-embeddings classifier that honours its attention mask (mean over attended tokens)."""

    def __init__(self, vocab: int = 50, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, classes)
        with torch.no_grad():
            self.head.weight.mul_(10)  # scores that differ visibly between masked inputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = (input_ids != PAD) if attention_mask is None else attention_mask.bool()
        w = mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * w).sum(1) / w.sum(1).clamp_min(1)
        return self.head(pooled)


def sequences(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch of random sequences (ids 2..49) of the given lengths, tokenizer style."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), PAD, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(2, 50, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": (ids != PAD).long()}


def plain_eq1(model: nn.Module, partition, x: dict[str, torch.Tensor], target: int) -> torch.Tensor:
    """Eq. 1 by hand for one input: keep part j (plus unpartitioned tokens), TokenMask the rest."""
    masks = partition.masks(x)
    keep = partition.keep(x)
    heat = torch.zeros(x["input_ids"].shape, dtype=torch.float64)
    cover = torch.zeros_like(heat)
    for m in masks:
        ids = torch.where(m | keep, x["input_ids"], MASK)
        s = model(ids[None], x["attention_mask"][None]).softmax(1)[0, target].double()
        heat += s * m
        cover += m
    return torch.where(cover > 0, heat / cover.clamp_min(1), 0).float()


@pytest.mark.parametrize("partition", [TokenWindows(size=3, stride=1, pad_id=PAD), Words(pad_id=PAD)])
@pytest.mark.parametrize("where", [0, 3, 6])
def test_the_one_token_the_model_reacts_to_scores_highest(partition, where):
    ids = torch.tensor([[3, 4, 5, 6, 8, 9, 2, PAD, PAD]])
    ids[0, where] = KEY
    heat = PAMI(key_token_model, partition, TokenMask(MASK), batch_size=4).explain(ids, target=0)
    assert heat.shape == ids.shape
    others = torch.cat([heat[0, :where], heat[0, where + 1 : 7]])
    assert heat[0, where] > others.max() + 0.1
    assert torch.all(heat[0, 7:] == 0)  # padding


def test_words_group_subword_tokens_from_word_ids():
    # Words: [CLS] the | gr ##eat | film [SEP] pad; KEY is "##eat": the whole word "great" lights up.
    x = {
        "input_ids": torch.tensor([[40, 3, 4, KEY, 5, 41, PAD]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 0]]),
        "word_ids": torch.tensor([[-1, 0, 1, 1, 2, -1, -1]]),
    }
    heat = PAMI(key_token_model, Words(), AttentionMask(), batch_size=2).explain(x, target=0)
    assert heat[0, 2] == heat[0, 3] and heat[0, 3] > heat[0, [1, 4]].max() + 0.5
    assert heat[0, [0, 5, 6]].eq(0).all()  # special tokens and padding are not explained


def test_words_from_offsets_and_separators():
    # "the great!" -> [CLS] the gr eat ! [SEP]: tokens touching the previous one continue its word.
    x = {
        "input_ids": torch.tensor([40, 3, 4, 5, 6, 41]),
        "offset_mapping": torch.tensor([[0, 0], [0, 3], [4, 6], [6, 9], [9, 10], [0, 0]]),
    }
    assert Words().labels(x).tolist() == [-1, 0, 1, 1, 1, -1]
    chars = torch.tensor([ord(c) for c in " hi  yo "])
    assert Words(separator_ids=[ord(" ")]).labels(chars).tolist() == [-1, 0, 0, -1, -1, 1, 1, -1]
    assert Words(keep_ids=[40, 41]).labels(x["input_ids"]).tolist() == [-1, 0, 1, 2, 3, -1]


def test_token_windows_are_centred_and_clipped_like_sliding_windows():
    masks = TokenWindows(size=3, stride=2).masks(torch.arange(2, 7))
    assert masks.int().tolist() == [[1, 1, 0, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 1]]
    assert TokenWindows(size=3, stride=2).num_parts(5) == len(masks)
    # Special tokens in the middle are skipped: a window spans real tokens on both sides.
    x = {"input_ids": torch.tensor([2, 3, 4, 5]), "special_tokens_mask": torch.tensor([0, 1, 0, 0])}
    assert TokenWindows(size=2, stride=1).masks(x).int().tolist() == [[1, 0, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1]]


@pytest.mark.parametrize("partition", [TokenWindows(size=3, stride=2), Words()])
def test_engine_equals_a_plain_eq1_loop(partition):
    model = BagModel().eval()
    x = sequences([9, 6, 8], seed=1)
    x["word_ids"] = torch.tensor([[0, 0, 1, 2, -1, 2, 3, 4, 5], [0, 1, 1, 2, 3, 4, -1, -1, -1], [0, 1, 2, 3, 3, 4, 5, 6, -1]])
    # A special token at the start of input 2: kept in every masked input, explained by no part.
    x["special_tokens_mask"] = torch.zeros_like(x["input_ids"])
    x["special_tokens_mask"][2, 0] = 1
    heat, target = PAMI(model, partition, TokenMask(MASK), batch_size=5).explain(x, return_target=True)
    for b in range(3):
        one = {k: v[b] for k, v in x.items()}
        torch.testing.assert_close(heat[b], plain_eq1(model, partition, one, int(target[b])), atol=1e-6, rtol=0)
    assert heat[2, 0] == 0 and heat[1, 6:].eq(0).all()


@pytest.mark.parametrize("masker", [TokenMask(MASK), AttentionMask()])
@pytest.mark.parametrize("partition", [TokenWindows(size=2, stride=1), Words()])
def test_packing_sequences_of_different_lengths_changes_no_map(masker, partition):
    model = BagModel().eval()
    packed = sequences([5, 9, 3], seed=2)
    explainer = PAMI(model, partition, masker, batch_size=7)
    together = explainer.explain(packed, target=[0, 1, 2])
    for b, n in enumerate([5, 9, 3]):
        alone = explainer.explain({k: v[b : b + 1, :n] for k, v in packed.items()}, target=[b])
        torch.testing.assert_close(together[b, :n], alone[0], atol=1e-6, rtol=0)
        assert together[b, n:].eq(0).all()


def test_tensor_ids_with_pad_id_match_the_dict_with_attention_mask():
    model = BagModel().eval()
    x = sequences([4, 7], seed=3)
    as_dict = PAMI(model, TokenWindows(3), TokenMask(MASK)).explain(x, target=1)
    as_ids = PAMI(model, TokenWindows(3, pad_id=PAD), TokenMask(MASK), forward=lambda m, ids: m(ids)).explain(x["input_ids"], target=1)
    torch.testing.assert_close(as_dict, as_ids, atol=1e-6, rtol=0)


def test_multi_label_recipe_explains_each_label_by_its_own_token():
    def two_labels(ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([6.0 * (ids == KEY).any(1) - 3, 6.0 * (ids == 9).any(1) - 3], dim=1)

    ids = torch.tensor([[3, KEY, 4, 5, 9, 6]])
    explainer = PAMI(two_labels, Words(), TokenMask(MASK), output="sigmoid")
    assert explainer.explain(ids, target=0)[0].argmax() == 1
    assert explainer.explain(ids, target=1)[0].argmax() == 4


class ToyCaptioner(nn.Module):
    """A captioner with known evidence: the logit of word w at every step is 8 * mean(image in region w),
    plus a teacher-forcing term from the previous token (so the caption fed matters)."""

    REGIONS: ClassVar = {3: (slice(2, 10), slice(2, 10)), 4: (slice(20, 30), slice(18, 28))}  # "dog", "ball"

    def __init__(self, vocab: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.vocab = vocab
        self.transition = nn.Parameter(torch.randn(vocab, vocab) * 0.1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        evidence = torch.zeros(images.shape[0], self.vocab)
        for word, (rows, cols) in self.REGIONS.items():
            evidence[:, word] = 8 * images[:, :, rows, cols].mean(dim=(1, 2, 3))
        return evidence[:, None, :] + self.transition[tokens]  # [N, T, V]


@pytest.mark.parametrize(("word", "position"), [(3, 1), (4, 3)])
def test_captioning_recipe_finds_the_region_of_the_explained_word(word, position):
    captioner = ToyCaptioner()
    image = torch.full((1, 3, 32, 32), 0.2)
    for rows, cols in ToyCaptioner.REGIONS.values():
        image[:, :, rows, cols] = 0.9
    caption = torch.tensor([[0, 2, 3, 5, 4]])  # <bos> a dog and ball, fed with teacher forcing
    explainer = PAMI(captioner, SlidingWindow(radius=3, stride=2), Blur(9, 4), output=caption_word_score(position),
                     forward=lambda m, x: m(x, caption.expand(len(x), -1)))
    heat = explainer.explain(image, target=word)[0]
    rows, cols = ToyCaptioner.REGIONS[word]
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[rows, cols] = True
    peak = divmod(int(heat.argmax()), 32)
    assert inside[peak]
    assert heat[inside].mean() > heat[~inside].mean() + 0.05


def test_caption_word_score_errors_name_the_fix():
    score = caption_word_score(5)
    with pytest.raises(ValueError, match=r"logits \[N, T, V\]"):
        score(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="position 5 is outside the caption's 3 steps"):
        score(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "inputs", "error", "match"),
    [
        ({"partition": TokenWindows()}, torch.ones(1, 4, dtype=torch.long), ValueError, r"masker=TokenMask\(mask_id\) or masker=AttentionMask\(\)"),
        ({"partition": TokenWindows(), "masker": Blur()}, torch.ones(1, 4, dtype=torch.long), ValueError, r"use masker=TokenMask\(mask_id\)"),
        ({"masker": TokenMask(0)}, torch.rand(1, 3, 8, 8), ValueError, "use TokenWindows or Words"),
        ({"partition": TokenWindows(), "masker": TokenMask(0), "shifts": [(1,)]}, torch.ones(1, 4, dtype=torch.long), ValueError, "pass shifts=None"),
        ({"partition": TokenWindows(), "masker": TokenMask(0)}, torch.ones(4, dtype=torch.long), ValueError, r"add a batch dimension"),
        ({"partition": TokenWindows(), "masker": TokenMask(0)}, torch.rand(1, 4), ValueError, r"integer token ids.*ids.long\(\)"),
        ({"partition": Words(), "masker": TokenMask(0)}, {"ids": torch.ones(1, 4, dtype=torch.long)}, ValueError, 'under "input_ids"'),
        ({"partition": Words(), "masker": TokenMask(0)}, {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 3)}, ValueError, r"one entry per token"),
        ({"partition": Words(), "masker": TokenMask(0)}, {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": [[1, 1, 1, 1]]}, ValueError, "torch.as_tensor"),
        ({"partition": Words(), "masker": AttentionMask()}, torch.ones(1, 4, dtype=torch.long), ValueError, r"for bare token ids use TokenMask"),
        ({"masker": Blur()}, {"input_ids": torch.ones(1, 4, dtype=torch.long)}, ValueError, "needs a tensor"),
        ({"partition": TokenWindows(), "masker": TokenMask(0)}, [[1, 2]], TypeError, r"token ids \[B, L\]"),
    ],
)
def test_bad_token_inputs_raise_errors_naming_the_fix(kwargs, inputs, error, match):
    with pytest.raises(error, match=match):
        PAMI(key_token_model, **kwargs).explain(inputs, target=0)


@pytest.mark.parametrize(("kwargs", "match"), [({"size": 0}, "size must be >= 1"), ({"stride": 0}, "stride must be >= 1")])
def test_token_windows_reject_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenWindows(**kwargs)


def test_html_highlights_and_escapes_tokens():
    html = highlight_tokens(["the", "<great>", "film"], torch.tensor([0.1, 0.9, 0.3]))
    assert html.count("<span") == 3 and "&lt;great&gt;" in html and "<great>" not in html
    # The most important token gets the colour map's last colour (Reds: dark red, white text).
    first, last = ("#{:02x}{:02x}{:02x}".format(*matplotlib.colormaps["Reds"](v, bytes=True)[:3]) for v in (0.0, 1.0))
    assert f'title="0.9" style="background-color: {last}; color: #ffffff' in html
    assert f'title="0.1" style="background-color: {first}; color: #000000' in html
    assert highlight_tokens(["a", "b"], [0.5, 0.5]).count(first) == 2  # a flat map: no highlight
    with pytest.raises(ValueError, match=r"2 values for 3 tokens.*heatmap\[i, :len\(tokens\)\]"):
        highlight_tokens(["a", "b", "c"], [0.1, 0.2])


def test_token_image_wraps_lines_and_colours_the_important_token():
    tokens = ["word"] * 30
    scores = torch.zeros(30)
    scores[0] = 1.0
    image = highlight_tokens_image(tokens, scores, width=200)
    assert image.shape[0] == 3 and image.shape[2] == 200 and image.shape[1] > 60  # several lines
    assert 0 <= image.min() and image.max() <= 1
    red = (image[0] > 0.3) & (image[1] < 0.1) & (image[2] < 0.1)  # dark red background of token 0
    assert red[: image.shape[1] // 3, :60].any() and not red[:, 100:].any()


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["the", "great", "film", "!"], [0, 1, 2, 3]),  # plain whitespace tokens: one word each
        (["[CLS]", "the", "gr", "##eat", "##ly", "film", "[SEP]", "[PAD]"], [-1, 0, 1, 1, 1, 2, -1, -1]),  # WordPiece
        (["<s>", "▁the", "▁gr", "eat", "ly", "▁film", "</s>", "<pad>"], [-1, 0, 1, 1, 1, 2, -1, -1]),  # SentencePiece
        (["<s>", "the", "Ġgr", "eat", "Ġfilm", "!", "</s>"], [-1, 0, 1, 1, 2, 2, -1]),  # byte-level BPE, first word unmarked
        (["▁", "(", "▁hi", "[MASK]", "s", "<|endoftext|>"], [0, 0, 1, -1, 2, -1]),  # a special token ends the word
        (["[CLS]", "##eat", "[SEP]"], [-1, 0, -1]),  # a continuation with no word before starts one
        ([], []),
    ],
)
def test_word_ids_from_tokens_follow_each_convention(tokens, expected):
    assert word_ids_from_tokens(tokens) == expected


def test_word_ids_from_tokens_take_custom_special_tokens():
    assert word_ids_from_tokens(["<bos>", "a", "b", "<eos>"], special={"<bos>", "<eos>"}) == [-1, 0, 1, -1]
    assert word_ids_from_tokens(["<s>", "a"], special=()) == [0, 1]


@pytest.mark.parametrize(
    "tokens",
    [
        ["[CLS]", "the", "gr", "##eat", "film", "[SEP]", "[PAD]"],
        ["<s>", "▁the", "▁gr", "eat", "▁film", "</s>", "<pad>"],
        ["<s>", "the", "Ġgr", "eat", "Ġfilm", "</s>", "<pad>"],
    ],
)
def test_both_pieces_of_the_word_the_model_reacts_to_share_the_top_score(tokens):
    # The model reacts only to the second piece of "great" (id KEY); Words must light up both pieces.
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens), start=10)}
    vocab[tokens[3]] = KEY
    ids = torch.tensor([[vocab[t] for t in tokens]])
    x = {"input_ids": ids, "attention_mask": (ids != vocab[tokens[-1]]).long(), "word_ids": torch.tensor([word_ids_from_tokens(tokens)])}
    heat = PAMI(key_token_model, Words(), AttentionMask(), batch_size=2).explain(x, target=0)[0]
    assert heat[2] == heat[3] and heat[3] > heat[[1, 4]].max() + 0.5
    assert heat[[0, 5, 6]].eq(0).all()


@pytest.mark.parametrize(("tokens", "match"), [("the great film", "got one str"), ([101, 2003], r"got int 101.*convert_ids_to_tokens")])
def test_word_ids_from_tokens_reject_what_is_not_token_strings(tokens, match):
    with pytest.raises(TypeError, match=match):
        word_ids_from_tokens(tokens)
