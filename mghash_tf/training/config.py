"""Training configuration: one frozen, validated dataclass per experiment, stored as JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mghash_tf.core.layout import get_layout
from mghash_tf.data.pipeline import AUGMENTATIONS

SCHEDULES = ("cosine", "warmup_linear", "constant")
OPTIMIZERS = ("adamw", "sgd")
WEIGHT_AVERAGING = ("none", "lookahead")
MIXED_PRECISION = ("auto", "none", "bfloat16", "float16")
# Presets: ``TrainConfig.preset(name, **overrides)``; every value stays overridable and the
# resolved config (with ``recipe`` naming the preset) is what config.json stores.
RECIPES = {
    "default": {},
    # A from-scratch small-image network trained like the fast-CIFAR recipes (README "Training
    # recipes"): SGD-Nesterov, warm-up then linear decay, label smoothing on the OrthoHash
    # objective, Lookahead weight averaging, alternating flip + 2-px translation, flip TTA for
    # codes, the quantisation weight ramped up late (int8 keeps the signs), validation every
    # 5th epoch counted back from the last (the rate decays to 0, so the end is the best).
    "fast": {
        "backbone": "fast_cnn", "image_size": 32, "loss": "ortho", "label_smoothing": 0.2,
        "optimizer": "sgd", "momentum": 0.85, "nesterov": True, "learning_rate": 0.8,
        "schedule": "warmup_linear", "warmup_fraction": 0.23, "weight_decay": 5e-4,
        "batch_size": 512, "frozen_epochs": 10, "weight_averaging": "lookahead",
        "augmentation": "alternating_flip_translate", "tta": True, "val_fraction": 0.05,
        "quantization_weight_final": 1.0, "val_every": 5,
    },
}
STRATEGIES = ("default", "mirrored", "multi_worker")
STAGE1_CACHE = ("none", "heads", "last_stage", "last_two_stages")
LABELS = ("auto", "none")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    ``data`` is a source spec (``npz:PATH``, ``folder:PATH``, ``tfds:NAME``, ``demo``).
    Stage 1 trains the heads with the backbone frozen (``frozen_epochs``, ``learning_rate``);
    stage 2 trains end to end (``finetune_epochs``, ``finetune_learning_rate``). A backbone
    without pretrained weights has nothing to protect, so for it stage 1 trains everything.
    ``stage1_cache`` (pretrained backbones only) runs stage 1 on a cached frozen trunk
    (:mod:`mghash_tf.training.cached`): ``"heads"`` trains the heads, ``"last_stage"`` the heads and the
    backbone's last stage, ``"last_two_stages"`` its last two; augmentation is then the
    horizontal flip only.

    ``recipe`` names the preset the config was made from (:meth:`preset`, ``RECIPES``).
    ``mixed_precision``: ``"auto"`` trains in bfloat16 where the CPU has bfloat16 instructions
    (AVX512_BF16/AMX) or the GPU is Ampere or newer, else float32; codes and losses are float32
    in every case and the saved model is float32. ``tta``: codes of validation and test images
    (and so the checkpoint choice) average the image and its mirror. ``val_every``: validate
    every n-th epoch counted back from each stage's last (always validated); the best validated
    epoch is kept. ``quantization_weight_final``: the quantisation weight rises from
    ``quantization_weight`` to it over each stage (late: ``progress**3``); None keeps it fixed.
    ``bias_lr_scale`` (SGD): rate multiplier of the BatchNorm offsets.

    ``labels``: ``"auto"`` trains with the data's labels, except on a folder source with image
    files directly in its root (read without labels, :func:`mghash_tf.data.sources.read_folder`),
    which switches to ``"none"`` with a logged warning. ``"none"`` trains without labels
    (:mod:`mghash_tf.training.unsupervised`: ``unsupervised_loss`` terms from ``contrastive`` and
    ``affinity``, NT-Xent at ``contrastive_temperature`` between two of ``unsupervised_views``
    cached views of each image (identity, mirror, then seeded random augmentations) with
    ``feature_dropout``, ``affinity_weight``; ``loss`` is then unused): it needs a pretrained
    backbone (``weights``) and ``stage1_cache``, and no ``finetune_epochs`` (fine-tuning reads
    labels). Labels the data has are then used only to report validation and test mAP, never
    to choose a checkpoint: the last epoch is the model.
    """

    data: str = "demo"
    download: bool = False
    backbone: str = "small_cnn"
    weights: str | None = None
    image_size: int = 32
    input_size: int | None = None
    layout: object = "mg64"
    recipe: str = "default"
    loss: str = "csq"
    ortho_scale: float = 8.0
    ortho_margin: float = 0.2
    label_smoothing: float = 0.0
    quantization_weight: float = 0.1
    quantization_weight_final: float | None = None
    balance_weight: float = 0.01
    frozen_epochs: int = 5
    finetune_epochs: int = 0
    batch_size: int = 64
    learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"
    warmup_fraction: float = 0.23
    weight_decay: float = 1e-4
    bias_lr_scale: float = 1.0
    weight_averaging: str = "none"
    augment: bool = True
    augmentation: str = "standard"
    tta: bool = False
    seed: int = 1
    val_fraction: float = 0.1
    test_fraction: float | None = None
    val_database_size: int = 5000
    val_every: int = 1
    max_train: int | None = None
    strategy: str = "default"
    mixed_precision: str = "auto"
    jit_compile: bool = False
    tensorboard: bool = False
    stage1_cache: str = "none"
    labels: str = "auto"
    unsupervised_loss: str = "contrastive"
    contrastive_temperature: float = 0.5
    affinity_weight: float = 1.0
    feature_dropout: float = 0.2
    unsupervised_views: int = 4

    def __post_init__(self):
        from mghash_tf.model.backbones import backbone_names  # Keras: only when a config is made

        _check_choice("backbone", self.backbone, backbone_names())
        _check_choice("recipe", self.recipe, tuple(RECIPES))
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("weight_averaging", self.weight_averaging, WEIGHT_AVERAGING)
        _check_choice("augmentation", self.augmentation, AUGMENTATIONS)
        if isinstance(self.mixed_precision, bool):  # configs written before the policy names
            object.__setattr__(self, "mixed_precision", "float16" if self.mixed_precision else "none")
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"`warmup_fraction` must be in [0, 1). Received: warmup_fraction={self.warmup_fraction}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={self.momentum}")
        for name in ("quantization_weight", "quantization_weight_final"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"`{name}` must be >= 0. Received: {name}={value}")
        if not self.bias_lr_scale > 0:
            raise ValueError(f"`bias_lr_scale` must be > 0. Received: bias_lr_scale={self.bias_lr_scale}")
        if self.bias_lr_scale != 1.0 and self.optimizer != "sgd":
            raise ValueError("`bias_lr_scale` scales SGD's rate for BatchNorm offsets; an adaptive optimiser "
                             f"normalises it away. Received: bias_lr_scale={self.bias_lr_scale}, "
                             f"optimizer={self.optimizer!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1). Received: label_smoothing={self.label_smoothing}")
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("stage1_cache", self.stage1_cache, STAGE1_CACHE)
        if self.stage1_cache != "none" and self.weights is None:
            raise ValueError("`stage1_cache` needs a pretrained backbone (`weights`): without one, "
                             f"stage 1 trains every layer. Received: stage1_cache={self.stage1_cache!r}, "
                             "weights=None")
        self._check_labels()
        get_layout(self.layout)
        for name in ("image_size", "batch_size", "val_every"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("frozen_epochs", "finetune_epochs", "val_database_size"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.frozen_epochs + self.finetune_epochs < 1:
            raise ValueError(
                "`frozen_epochs + finetune_epochs` must be >= 1. "
                f"Received: {self.frozen_epochs} + {self.finetune_epochs}"
            )
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"`val_fraction` must be in (0, 0.5). Received: val_fraction={self.val_fraction}")
        if self.test_fraction is not None and not 0.0 < self.test_fraction < 0.5:
            raise ValueError(f"`test_fraction` must be None or in (0, 0.5). Received: test_fraction={self.test_fraction}")
        for name in ("learning_rate", "finetune_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0. Received: {name}={getattr(self, name)}")

    def _check_labels(self):
        from mghash_tf.model.unsupervised_loss import parse_unsupervised_terms

        _check_choice("labels", self.labels, LABELS)
        parse_unsupervised_terms(self.unsupervised_loss)
        if not self.contrastive_temperature > 0:
            raise ValueError("`contrastive_temperature` must be > 0. "
                             f"Received: contrastive_temperature={self.contrastive_temperature}")
        if not self.affinity_weight >= 0:
            raise ValueError(f"`affinity_weight` must be >= 0. Received: affinity_weight={self.affinity_weight}")
        if not 0.0 <= self.feature_dropout < 1.0:
            raise ValueError(f"`feature_dropout` must be in [0, 1). Received: feature_dropout={self.feature_dropout}")
        _check_int("unsupervised_views", self.unsupervised_views, minimum=1)
        if self.unsupervised_views > 16:
            raise ValueError("`unsupervised_views` (cached versions of every training image; memory grows with "
                             f"it) must be at most 16. Received: unsupervised_views={self.unsupervised_views}")
        if self.labels != "none":
            return
        if self.weights is None or self.stage1_cache == "none":
            raise ValueError("`labels='none'` trains the hash head on a pretrained backbone's cached trunk: it "
                             "needs `weights` (e.g. imagenet) and `stage1_cache` ('heads' or 'last_stage'). "
                             f"Received: weights={self.weights!r}, stage1_cache={self.stage1_cache!r}")
        if self.finetune_epochs:
            raise ValueError("`labels='none'` has no end-to-end stage (it trains on labels): set "
                             f"finetune_epochs=0. Received: finetune_epochs={self.finetune_epochs}")

    @classmethod
    def preset(cls, recipe: str, **overrides) -> "TrainConfig":
        """The ``RECIPES[recipe]`` values, then ``overrides``; ``recipe`` is recorded."""
        _check_choice("recipe", recipe, tuple(RECIPES))
        return cls(**{**RECIPES[recipe], **overrides, "recipe": recipe})

    @property
    def code_layout(self):
        return get_layout(self.layout)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not isinstance(self.layout, (str, int)):
            d["layout"] = get_layout(self.layout).to_dict()
        return d

    def to_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown config keys {unknown}. Known keys: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")


def _check_int(name, value, *, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")
