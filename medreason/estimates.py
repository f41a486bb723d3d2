"""What a model costs before it trains: trainable parameters and memory (steps, FLOPs and time: medreason.compute).

    from medreason import estimates
    estimates.lora_param_table(model)                          # trainable parameters vs rank and targets (PEFT)
    estimates.weight_memory_table({"SmolLM2-135M": model})     # GB for the weights in fp32 / bf16 / NF4
    estimates.training_memory_table(model.config, lora_params) # full FT vs LoRA vs QLoRA, with activations
    estimates.saved_activation_bytes(model, tokens=256)        # measured: what autograd keeps for backward

Tables are pandas DataFrames for `medreason.plots` and the book to show. Heavy imports stay inside functions.
"""

from __future__ import annotations

import copy

# QLoRA's 4-bit NormalFloat storage (Dettmers et al. 2023): 4 bits per weight plus one absmax constant per
# block of 64 weights. Without double quantization the constant is fp32 (32/64 = 0.5 bit per weight); double
# quantization stores it in 8 bits with one fp32 constant per 256 constants: 8/64 + 32/(64*256) ≈ 0.127 bit.
NF4_BITS = 4 + 32 / 64
NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)
# GGUF's Q4_1 (the offline SmolLM2's source): blocks of 32 weights, 4 bits each, plus an fp16 scale and an fp16
# minimum per block: 4 + 2 * 16 / 32 = 5 bits per weight.
Q4_1_BITS = 4 + 2 * 16 / 32
# Per trainable parameter, mixed-precision AdamW as in the ZeRO paper's accounting (Rajbhandari et al. 2020):
# full fine-tuning keeps bf16 weights (2) and gradients (2), plus an fp32 master copy (4) and two fp32 moments
# (8) = 16 bytes. A LoRA adapter is kept in fp32 (PEFT's default): weight 4, gradient 4, moments 8.
FULL_FT_BYTES = {"weights": 2 + 4, "gradients": 2, "optimizer state": 8}
ADAPTER_BYTES = {"weights": 4, "gradients": 4, "optimizer state": 8}


# --------------------------------------------------------------------------------------------- parameters

# Published architectures (config.json of each Hub repository) for models the book reasons about without
# downloading them: built on the meta device they give exact parameter counts and shapes.
PUBLISHED_ARCHITECTURES = {
    "SmolLM2-135M-Instruct": (
        "llama",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            tie_word_embeddings=True,
        ),
    ),
    "Qwen2.5-0.5B-Instruct": (
        "qwen2",
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    "Qwen2.5-7B-Instruct": (
        "qwen2",
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            tie_word_embeddings=False,
        ),
    ),
}


def published_config(name: str):
    """The transformers config of a model in PUBLISHED_ARCHITECTURES (no download)."""
    from transformers import AutoConfig

    kind, kwargs = PUBLISHED_ARCHITECTURES[name]
    return AutoConfig.for_model(kind, **kwargs)


def param_count(config) -> int:
    """Parameters of `config`'s architecture (tied weights counted once), built on the meta device."""
    return sum(p.numel() for p in architecture_on_meta(config).parameters())


def lora_param_table(model, ranks=(4, 8, 16, 32, 64), target_presets=("attention", "all-linear"), **lora_kwargs):
    """Trainable parameters and adapter size for each (targets, rank), counted by PEFT itself on a copy of
    `model` (left untouched). The count does not depend on alpha; `lora_kwargs` go to LoraConfig
    (use_dora=True, ...). The memory columns split what AdamW keeps per trainable fp32 parameter."""
    import pandas as pd
    from peft import LoraConfig, get_peft_model

    from medreason.config import LORA_PRESETS

    base = sum(p.numel() for p in model.parameters())
    rows = []
    for preset in target_presets:
        for r in ranks:
            config = LoraConfig(
                r=r,
                lora_alpha=32,
                target_modules=LORA_PRESETS[preset],
                lora_dropout=0.0,
                task_type="CAUSAL_LM",
                **lora_kwargs,
            )
            peft_model = get_peft_model(copy.deepcopy(model), config)
            trainable, _ = peft_model.get_nb_trainable_parameters()
            n_modules = sum(1 for name, _ in peft_model.named_modules() if name.endswith(".lora_A"))
            del peft_model
            rows.append(
                {
                    "targets": preset,
                    "rank r": r,
                    "adapted layers": n_modules,
                    "trainable params": trainable,
                    "% of base": 100 * trainable / base,
                    "adapter MB (bf16)": trainable * 2 / 1e6,
                    **{f"{part} MB (fp32)": trainable * size / 1e6 for part, size in ADAPTER_BYTES.items()},
                }
            )
    return pd.DataFrame(rows)


def lora_param_count(
    config, r: int, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
) -> int:
    """r * (d + k) summed over the targeted linear layers of a Llama/Qwen2-style decoder, from its config alone
    (for models too large to build; `lora_param_table` counts real models with PEFT)."""
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    shapes = {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    return config.num_hidden_layers * sum(r * sum(shapes[t]) for t in targets)


def architecture_on_meta(config):
    """A model of `config`'s architecture on PyTorch's meta device: real shapes, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def quantizable_split(model) -> tuple[int, int]:
    """(parameters in the decoder's linear layers, all other parameters). bitsandbytes quantizes the
    former to 4 bits under QLoRA; embeddings, norms, biases and the output head stay in bf16."""
    import torch

    unique, linear = {}, 0
    for p in model.parameters():
        unique[id(p)] = p.numel()
    head = model.get_output_embeddings()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            linear += module.weight.numel()
    return linear, sum(unique.values()) - linear


def gguf_roundtrip_table(types=("Q8_0", "Q4_1", "Q4_0"), shape=(576, 1536), seed: int = 0):
    """Bits per weight of GGUF quantization types (from the `gguf` package's block sizes) and the relative
    error (Frobenius norm) a quantize-dequantize round trip leaves on a random Gaussian matrix of `shape`,
    computed with `gguf`'s own reference quantizers: what storing weights that way costs, without needing
    the original checkpoint."""
    import numpy as np
    import pandas as pd
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    weights = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    rows = {}
    for name in types:
        kind = GGMLQuantizationType[name]
        block, size = GGML_QUANT_SIZES[kind]
        back = dequantize(quantize(weights, kind), kind)
        rows[name] = {
            "weights per block": block,
            "bits per weight": size * 8 / block,
            "relative error": float(np.linalg.norm(back - weights) / np.linalg.norm(weights)),
        }
    return pd.DataFrame(rows).T.rename_axis("GGUF type")


# --------------------------------------------------------------------------------------------- memory


def weight_memory_table(models: dict):
    """GB for the weights alone, per storage format, for each named model: fp32, bf16, and QLoRA's NF4
    (linear layers in 4 bits, the rest in bf16) with and without double quantization."""
    import pandas as pd

    rows = []
    for name, model in models.items():
        linear, other = quantizable_split(model)
        total = linear + other
        nf4 = linear * NF4_BITS / 8 + other * 2
        nf4_dq = linear * NF4_DQ_BITS / 8 + other * 2
        rows.append(
            {
                "model": name,
                "params (M)": total / 1e6,
                "in linear layers": f"{linear / total:.0%}",
                "fp32 GB": total * 4 / 1e9,
                "bf16 GB": total * 2 / 1e9,
                "NF4 GB": nf4 / 1e9,
                "NF4+DQ GB": nf4_dq / 1e9,
                "NF4+DQ bytes/param": nf4_dq / total,
            }
        )
    return pd.DataFrame(rows).set_index("model")


def activation_bytes(config, tokens: int, lora: bool = True, checkpointing: bool = False) -> dict[str, float]:
    """Bytes autograd keeps for the backward pass of one sequence of `tokens` through a Llama/Qwen2-style
    decoder in bf16 with SDPA attention (no attention matrix is stored), by a tensor count:

    per layer and token, the bf16 tensors the matmuls and activations need back (two norm outputs, q, k, v,
    the attention output, the gate, up, SiLU and product of the MLP: 6h + 2 kv + 4i values), the norms'
    fp32 inputs (2h values; transformers' RMSNorm computes in fp32), and with LoRA the fp32 copies of the four
    distinct adapted inputs (3h + i values; PEFT casts the input to the fp32 adapter). The output head keeps
    bf16 logits and fp32 log-probabilities (6 bytes per vocabulary entry and token).

    With gradient checkpointing only each layer's bf16 input is kept, plus one layer recomputed at a time.
    An estimate: `saved_activation_bytes` measures the real thing on a model small enough to run."""
    h, i, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = 2 * (6 * h + 2 * kv + 4 * i) + 4 * 2 * h + (4 * (3 * h + i) if lora else 0)
    layers = tokens * (n_layers * 2 * h + per_layer) if checkpointing else tokens * n_layers * per_layer
    return {"decoder layers": float(layers), "output head": float(tokens * config.vocab_size * 6)}


def saved_activation_bytes(model, tokens: int = 256, seed: int = 0) -> float:
    """Measured: bytes of the distinct tensors (other than parameters) that autograd saves for backward in one
    training forward pass (loss included) over `tokens` random token ids, via `saved_tensors_hooks`."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params and storage.device.type != "meta":
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(model.device)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss = model(input_ids=ids, labels=ids).loss
    del loss
    return float(sum(storages.values()))


def training_memory_table(config, lora_params: int, tokens: int = 1024, checkpointing: bool = False):
    """GB to train one sequence of `tokens`, by method, for the architecture `config`, split into weights,
    gradients, optimizer state and activations: full fine-tuning (16 bytes per parameter in mixed-precision
    AdamW), bf16 LoRA and QLoRA (NF4 with double quantization) with an fp32 adapter of `lora_params`."""
    import pandas as pd

    model = architecture_on_meta(config)
    linear, other = quantizable_split(model)
    total = linear + other
    full_acts = sum(activation_bytes(config, tokens, lora=False, checkpointing=checkpointing).values())
    lora_acts = sum(activation_bytes(config, tokens, lora=True, checkpointing=checkpointing).values())
    rows = {
        "full fine-tuning (bf16 + AdamW)": {
            "weights": total * FULL_FT_BYTES["weights"],
            "gradients": total * FULL_FT_BYTES["gradients"],
            "optimizer state": total * FULL_FT_BYTES["optimizer state"],
            "activations": full_acts,
        },
        "LoRA, bf16 base": {
            "weights": total * 2 + lora_params * ADAPTER_BYTES["weights"],
            "gradients": lora_params * ADAPTER_BYTES["gradients"],
            "optimizer state": lora_params * ADAPTER_BYTES["optimizer state"],
            "activations": lora_acts,
        },
        "QLoRA, NF4+DQ base": {
            "weights": linear * NF4_DQ_BITS / 8 + other * 2 + lora_params * ADAPTER_BYTES["weights"],
            "gradients": lora_params * ADAPTER_BYTES["gradients"],
            "optimizer state": lora_params * ADAPTER_BYTES["optimizer state"],
            "activations": lora_acts,
        },
    }
    frame = pd.DataFrame(rows).T / 1e9
    frame["total"] = frame.sum(axis=1)
    return frame.rename(columns=lambda c: f"{c} GB").rename_axis("method")
