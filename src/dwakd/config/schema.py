"""The typed training configuration (TRL style: every field documented in its ``metadata["help"]``).

A YAML file has five top-level sections plus ``output_dir``::

    output_dir: runs/demo
    model:  {teacher: ..., student: ... | build: {...}, lora: {...} | null, ...}
    data:   {train: ..., dev: ..., max_length: 512, ...}
    method: {name: dwakd, <method options>...}
    train:  {lr: 5e-4, epochs: 20, batch_size: 8, ...}

``method`` is flat: every key other than ``name`` is an option of that method (validated against
the method's own ``Options`` dataclass); an explicit ``options:`` mapping is accepted too.
:func:`describe_config` renders this reference as Markdown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DTYPES = ("float32", "bfloat16", "float16")


def _f(default: Any = None, help: str = "", *, factory=None):  # noqa: A002 - TRL-style "help"
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class BuildStudentConfig:
    """A random-init student built by dwakd with its own tokenizer trained on the training texts."""

    family: Literal["llama", "gpt2"] = _f("llama", "Architecture family of the built student.")
    hidden_size: int = _f(256, "Hidden size d_s.")
    num_layers: int = _f(4, "Number of transformer layers.")
    num_heads: int = _f(4, "Number of attention heads (must divide hidden_size).")
    intermediate_size: int = _f(688, "MLP inner size.")
    max_positions: int = _f(512, "Maximum positions (must be >= data.max_length).")
    tokenizer_kind: Literal["bpe", "unigram", "wordpiece"] = _f("bpe", "Tokenizer model trained for the student.")
    vocab_size: int = _f(4096, "Target vocabulary size of the trained tokenizer.")
    add_bos: bool = _f(False, "Prepend <s> when encoding with special tokens.")
    tie_embeddings: bool = _f(True, "Tie the input embedding and the LM head.")
    seed: int = _f(0, "Seed of the random initialisation.")
    cache_dir: str | None = _f(
        None,
        "Where built students are cached, keyed by a hash of this block and of the training texts "
        "(default $DWAKD_HOME/students). Reruns reuse the same student and tokenizer.",
    )


@dataclass
class LoraConfig:
    """LoRA adapters on the student (through ``peft``); the method's projectors stay fully trainable."""

    r: int = _f(256, "LoRA rank (paper: 256).")
    alpha: float = _f(8.0, "LoRA alpha (paper: 8); the update is scaled by alpha / r.")
    dropout: float = _f(0.1, "Dropout on the LoRA input (paper: 0.1).")
    target_modules: list[str] | str | None = _f(
        None,
        "Module names to adapt, 'all-linear', or null for peft's default for the architecture "
        "(q/v projections for Llama/Mistral/OPT, c_attn for GPT-2).",
    )


@dataclass
class ModelConfig:
    """The teacher and the student."""

    teacher: str | None = _f(
        None, "Teacher: hub name, local directory or built-in alias (e.g. smollm2-135m-instruct). "
        "May be null only for methods that need no teacher (sft)."
    )
    student: str | None = _f(None, "Student: hub name, local directory or alias. Exactly one of student / build.")
    build: BuildStudentConfig | None = _f(None, "Build a random-init student instead of loading one.")
    lora: LoraConfig | None = _f(None, "Train LoRA adapters instead of all student weights (null = full fine-tuning).")
    dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32", "Dtype of the student's stored weights (keep float32 and use train.bf16 for mixed precision)."
    )
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto", "Teacher weight dtype; auto = bfloat16 on a GPU that supports it, else float32."
    )
    teacher_cache: Literal["auto", "off"] = _f(
        "auto", "auto: read the teacher's outputs from a cache built by `dwakd cache-teacher` for exactly this "
        "teacher and data when one exists (else run the teacher live); off: always run the teacher."
    )
    gradient_checkpointing: bool = _f(False, "Recompute student activations in the backward pass (saves memory).")
    trust_remote_code: bool = _f(False, "Allow model code from the hub (passed to from_pretrained).")


@dataclass
class DataConfig:
    """Training / dev data and how it is tokenized."""

    train: str | None = _f(
        None, "Training records: a .jsonl/.json/.csv/.tsv/.parquet/.arrow file, a save_to_disk folder or a hub dataset "
        "name (read through `datasets`). Formats: Dolly, Alpaca, MiniLLM (prompt/output), chat (messages), ShareGPT "
        "(conversations), prompt/completion.")
    dev: str | None = _f(None, "Dev records (same kinds as data.train); null = split data.dev_fraction off the training set.")
    split: str = _f("train", "Split of data.train to read when it is a DatasetDict folder or a hub dataset.")
    dev_split: str = _f("validation", "Split of data.dev to read when it is a DatasetDict folder or a hub dataset.")
    dev_fraction: float = _f(0.05, "Fraction of training records held out as dev set when data.dev is null (0 = no dev set).")
    format: Literal["auto", "dolly", "alpaca", "minillm", "chat", "sharegpt", "prompt-completion"] = _f(
        "auto", "Record format; auto detects it from the fields.")
    fields: dict[str, str] = _f(
        factory=dict, help="Rename your fields to dwakd's before detection: {dwakd name: your name}, e.g. "
        "{instruction: question, response: answer}. dwakd names: instruction, context, input, response, output, "
        "prompt, completion, messages, conversations.")
    max_length: int = _f(512, "Maximum tokens per example and side (prompt + response + EOS).")
    max_prompt_length: int = _f(256, "Prompts are cut from the left to this many tokens.")
    on_bad_record: Literal["error", "skip"] = _f("error", "A malformed record stops the run (error) or is counted and skipped.")
    student_chat_template: bool = _f(False, "Format the student's prompt with its chat template (when it has one).")
    teacher_chat_template: bool = _f(False, "Format the teacher's prompt with its chat template (when it has one).")
    max_train_records: int | None = _f(None, "Use only the first N training records (quick runs).")
    max_dev_records: int | None = _f(None, "Use only the first N dev records.")


@dataclass
class MethodConfig:
    """The distillation method (see ``dwakd.methods.available_methods()``) and its options."""

    name: str = _f("dwakd", "Registered method name: sft, kd, dskd, dskd-eta, uld, mined, multilevel-ot, dwakd, dwakd-eta, alm, cdm (or one registered by a plugin).")
    options: dict[str, Any] = _f(factory=dict, help="Options of that method (written flat in YAML: method.gamma: 1.0).")


@dataclass
class TrainConfig:
    """Optimisation, evaluation, checkpointing and logging."""

    lr: float = _f(5e-4, "Peak learning rate of the student parameters.")
    projector_lr: float = _f(1e-3, "Peak learning rate of the method's projectors (their own AdamW group).")
    epochs: int = _f(1, "Passes over the training set (ignored when max_steps is set).")
    max_steps: int | None = _f(None, "Total optimizer steps; overrides epochs and sets the schedule length.")
    stop_at_step: int | None = _f(
        None, "Stop (with a checkpoint) at this global step without changing the schedule; resume later with --resume auto."
    )
    batch_size: int = _f(8, "Examples per micro-batch per process. Global batch = batch_size x grad_accum x processes.")
    eval_batch_size: int | None = _f(None, "Examples per dev micro-batch (default: batch_size).")
    grad_accum: int = _f(1, "Micro-batches per optimizer step per process.")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and norms).")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_eps: float = _f(1e-8, "AdamW epsilon.")
    warmup_steps: int = _f(0, "Linear warm-up steps before the cosine decay.")
    warmup_ratio: float = _f(0.0, "Warm-up as a fraction of the total steps (used when warmup_steps is 0).")
    min_lr_ratio: float = _f(0.0, "The cosine decays to lr x min_lr_ratio.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm over all trainable parameters (0 = no clipping).")
    bf16: bool | Literal["auto"] = _f("auto", "bf16 autocast: true, false, or auto (on when a GPU supports it).")
    seed: int = _f(42, "Seed of initialisation, data order and dropout.")
    eval_every: int = _f(0, "Evaluate on the dev set every N optimizer steps (0 = at the end of each epoch).")
    save_every: int = _f(0, "Save a checkpoint every N optimizer steps (0 = at the end of each epoch).")
    keep_best_n: int = _f(1, "Keep the N checkpoints with the lowest dev loss.")
    keep_last_n: int = _f(1, "Also keep the N most recent checkpoints (for --resume).")
    final_model: Literal["last", "best"] = _f("last", "Weights written to <output_dir>/final: the last step or the best dev loss.")
    max_bad_steps: int = _f(10, "Stop with an error after this many consecutive steps with a non-finite loss or gradient.")
    log_every: int = _f(10, "Write metrics every N optimizer steps.")
    report_to: list[str] | str = _f(
        factory=list, help="Trackers through Accelerate, as in TRL: a name or a list of tensorboard, wandb, trackio, "
        "comet_ml, mlflow, aim, clearml, dvclive, swanlab; 'all' (every installed one) or 'none'. metrics.jsonl is "
        "always written.")
    trackers: list[str] | str | None = _f(None, "Alias of train.report_to (older configs).")
    push_to_hub: bool = _f(False, "Upload final/ to the hub repository train.hub_model_id when the run completes.")
    hub_model_id: str | None = _f(None, "Hub repository for push_to_hub (user/name); default: the run directory's name.")
    hub_private: bool = _f(True, "Create the hub repository as private (push_to_hub).")
    license: str | None = _f(None, "License id written in final/README.md (e.g. apache-2.0); null = 'other' (check the "
                             "teacher's, student's and data's licences).")
    ddp_find_unused_parameters: bool = _f(
        True, "DDP: allow parameters that get no gradient in a step (e.g. projectors an ablation switches off)."
    )


@dataclass
class DwakdConfig:
    """The whole run."""

    output_dir: str | None = _f(None, "Run directory (default runs/<config file name>).")
    model: ModelConfig = _f(factory=ModelConfig, help="Teacher and student.")
    data: DataConfig = _f(factory=DataConfig, help="Training and dev data.")
    method: MethodConfig = _f(factory=MethodConfig, help="Distillation method and options.")
    train: TrainConfig = _f(factory=TrainConfig, help="Optimisation, evaluation, checkpoints, logging.")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "method": MethodConfig, "train": TrainConfig}
