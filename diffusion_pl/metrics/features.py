"""Feature extractors for FID / KID: InceptionV3 (paper numbers) and a small digits classifier.

Every extractor here takes images as the project stores them — float ``[B, C, H, W]`` in
[−1, 1] — converts them to what its network expects, and returns ``[B, num_features]``. The
``num_features`` attribute tells torchmetrics the feature size without a probe forward pass.
Any other ``nn.Module`` with that contract can be named by class path in YAML.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DIGITS_WEIGHTS",
    "FEATURES",
    "INCEPTION_WEIGHTS_URL",
    "DigitsClassifier",
    "DigitsFeatures",
    "InceptionFeatures",
    "extractor_id",
    "inception_weights_missing",
    "resolve_extractor",
]

DIGITS_WEIGHTS = Path(__file__).with_name("digits_classifier.pt")
"""Shipped weights of :class:`DigitsClassifier`, written by benchmarks/train_digits_features.py."""

INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
"""torch-fidelity's port of the TF InceptionV3 of the original FID code (Heusel et al. 2017)."""


def to_uint8(x: Tensor) -> Tensor:
    """[−1, 1] floats to 8-bit pixels: ``round((x + 1) · 127.5)`` clipped to [0, 255]."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class DigitsClassifier(nn.Module):
    """A small CNN for 8×8 digits: two conv stages, a 128-unit feature layer, 10 logits.

    ``features(x)`` is the 128-d penultimate activation that digits FID uses; ``forward(x)``
    returns class logits (for the classifier's accuracy and for guidance benchmarks).
    About 100k parameters (≈ 0.4 MB in fp32).
    """

    num_features = 128

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.GELU(),
            nn.MaxPool2d(2),  # 8×8 → 4×4
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.GELU(),
            nn.MaxPool2d(2),  # 4×4 → 2×2
            nn.Flatten(),
            nn.Linear(64 * 2 * 2, self.num_features), nn.GELU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.num_features, 10))

    def features(self, x: Tensor) -> Tensor:
        """128-d features of digits ``x`` ``[B, 1, H, W]`` in [−1, 1] (resized to 8×8 if needed)."""
        if x.shape[1] != 1:
            raise ValueError(f"digits features need 1-channel images, got {x.shape[1]} channels")
        if x.shape[-2:] != (8, 8):
            x = F.interpolate(x.float(), (8, 8), mode="bilinear", antialias=True)
        return self.body(x.float())

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[B, 10]``."""
        return self.head(self.features(x))


class DigitsFeatures(nn.Module):
    """The shipped digits classifier as a frozen FID feature extractor (runs offline).

    Args:
        weights_path: a :class:`DigitsClassifier` checkpoint; default: the shipped one.
    """

    num_features = DigitsClassifier.num_features

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        path = Path(weights_path) if weights_path is not None else DIGITS_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"digits classifier weights {str(path)!r} not found; re-create them with "
                "`python benchmarks/train_digits_features.py`"
            )
        self.classifier = DigitsClassifier()
        self.classifier.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> DigitsFeatures:
        """Stay in eval mode: a feature extractor is frozen."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``[B, 128]`` of images ``[B, 1, H, W]`` in [−1, 1]."""
        return self.classifier.features(x)


class InceptionFeatures(nn.Module):
    """torch-fidelity's InceptionV3 pool features (2048-d), comparable with published FIDs.

    Images in [−1, 1] are quantised to 8 bits (as saved PNGs would be), grey images repeated to
    3 channels; torch-fidelity then resizes to 299×299 the way the TF reference code does.

    Args:
        weights_path: local copy of torch-fidelity's InceptionV3 weights
            (:data:`INCEPTION_WEIGHTS_URL`). Default: torch hub's cache, where torch-fidelity
            puts them after a download.
    """

    num_features = 2048

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = Path(weights_path) if weights_path else default_inception_weights()
        if not path.is_file():
            raise inception_weights_missing(
                path,
                "set weights_path: PATH in the init_args of class_path "
                "diffusion_pl.metrics.InceptionFeatures",
            )
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
        )
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> InceptionFeatures:
        """Stay in eval mode: a feature extractor is frozen."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``[B, 2048]`` of images ``[B, C, H, W]`` in [−1, 1], C ∈ {1, 3}."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        (features,) = self.net(to_uint8(x))
        return features


def inception_weights_missing(path: Path, elsewhere: str) -> FileNotFoundError:
    """The error for InceptionV3 weights missing at ``path``; ``elsewhere`` says how the user
    names another file where they are (``--feature_weights`` on the command line, a YAML key)."""
    return FileNotFoundError(
        f"InceptionV3 weights not found at {str(path)!r}. This machine cannot download "
        f"them at run time: fetch {INCEPTION_WEIGHTS_URL} on a machine with internet, "
        f"copy it to {str(default_inception_weights())!r} (or anywhere, and {elsewhere}), "
        "or use the offline `digits` extractor."
    )


def default_inception_weights() -> Path:
    """Where torch hub (and so torch-fidelity) caches the InceptionV3 weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_URL.rsplit("/", 1)[1]


FEATURES: dict[str, type[DigitsFeatures] | type[InceptionFeatures]] = {
    "digits": DigitsFeatures,
    "inception": InceptionFeatures,
}
"""Short names of the shipped extractors, for the command line only (``diffusion-pl fid
--feature digits``), where a class path would be a mouthful for the two everyday choices; DESIGN
rule 3 allows one such table for commands. YAML names an extractor by ``class_path``
(``diffusion_pl.metrics.DigitsFeatures``), which also reaches any other ``nn.Module`` with an
int ``num_features``."""


def resolve_extractor(feature: str | nn.Module, weights_path: str | None = None) -> nn.Module:
    """A short name of :data:`FEATURES` to its extractor; a module is checked and returned.

    Args:
        feature: ``"digits"`` or ``"inception"`` (command line), or the extractor itself (YAML
            ``class_path``).
        weights_path: weights file of a named extractor (default: its usual place).
    """
    if isinstance(feature, nn.Module):
        if not isinstance(getattr(feature, "num_features", None), int):
            raise ValueError(
                f"feature extractor {type(feature).__name__} needs an int attribute "
                "`num_features` (its output size)"
            )
        return feature.eval()
    if feature not in FEATURES:
        raise ValueError(
            f"unknown feature extractor {feature!r}: use one of {sorted(FEATURES)} or an nn.Module "
            "given by class_path"
        )
    return FEATURES[feature](weights_path)


def extractor_id(extractor: nn.Module) -> str:
    """A name for cache keys: the class name and a hash of the weights (new weights, new key)."""
    digest = hashlib.sha1()
    for name, tensor in extractor.state_dict().items():
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return f"{type(extractor).__name__.lower()}-{digest.hexdigest()[:10]}"
