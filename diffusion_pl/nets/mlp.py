"""A residual MLP denoiser for low-dimensional (2-D toy) data."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from diffusion_pl.nets.embeddings import NoiseEmbedding, NoiseFeatures, PositionalEmbedding

__all__ = ["MLP", "MLPBlock", "ResidualMLP"]


class MLPBlock(nn.Module):
    """Residual block ``h + Linear(SiLU(Linear(SiLU(h)) + Linear(SiLU(emb))))``.

    Args:
        hidden: width of ``h``.
        emb_dim: width of the noise/class embedding.

    Reference: He et al. (2016), residual learning; Ho et al. (2020), time-embedding injection.
    """

    def __init__(self, hidden: int, emb_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """Apply the block.

        Args:
            h: ``[B, hidden]`` features.
            emb: ``[B, emb_dim]`` embedding (pre-activation).

        Returns:
            ``[B, hidden]`` features.
        """
        z = self.fc1(F.silu(h)) + self.emb_proj(F.silu(emb))
        return h + self.fc2(F.silu(z))


class ResidualMLP(nn.Module):
    """``x [B, D]`` → Linear → residual blocks fed the noise (and class) embedding → SiLU → Linear.

    The trunk of the denoiser :class:`MLP` and of the noisy classifier
    :class:`~diffusion_pl.nets.classifier.MLPClassifier`; they differ in the output width.

    Args:
        dim: data dimension D.
        out_dim: output width.
        hidden: width of the hidden layers.
        depth: number of residual blocks.
        embedding: builds the noise-label features (:class:`~.embeddings.PositionalEmbedding`,
            :class:`~.embeddings.FourierEmbedding`, by ``class_path`` in YAML).
        embedding_dim: width of the sinusoidal features (the embedding MLP outputs ``hidden``).
        class_embeddings: number of classes K the trunk is conditioned on, or None.
        num_noise_labels: noise labels per example, embedded and summed (2 for MeanFlow).

    Reference: He et al. (2016), residual learning; Ho et al. (2020), time-embedding injection.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        hidden: int,
        depth: int,
        embedding: NoiseFeatures,
        embedding_dim: int,
        class_embeddings: int | None,
        num_noise_labels: int = 1,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_noise_labels = num_noise_labels
        self.embed = NoiseEmbedding(
            embedding, embedding_dim, hidden, class_embeddings, num_noise_labels
        )
        self.fc_in = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(MLPBlock(hidden, hidden) for _ in range(depth))
        self.fc_out = nn.Linear(hidden, out_dim)

    def forward(
        self, x: Tensor, noise_labels: Tensor | float, class_labels: Tensor | None = None
    ) -> Tensor:
        """Evaluate the network.

        Args:
            x: ``[B, D]`` noisy data.
            noise_labels: ``[B]`` float noise conditioning (``t``, ``log σ``, …), or one value;
                ``[B, num_noise_labels]`` when there are several.
            class_labels: ``[B]`` int64 in ``[0, K]``, or ``None`` (unconditional).

        Returns:
            ``[B, out_dim]`` raw network output.
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects x of shape [B, {self.dim}], got {list(x.shape)}; "
                f"set dim={x.shape[-1]} to match the data"
            )
        emb = self.embed(noise_labels, class_labels, x.shape[0])
        h = self.fc_in(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.fc_out(F.silu(h))


class MLP(ResidualMLP):
    """Residual MLP ``(x, noise_labels, class_labels) → output shaped like x`` for ``[B, D]`` data.

    The embedded noise label (plus class embedding) is added inside every residual block. The
    output layer is zero-initialised, so an untrained net outputs zeros.

    Args:
        dim: data dimension D.
        hidden: width of the hidden layers.
        depth: number of residual blocks.
        embedding: noise-label features, a class taking the width
            (:class:`~.embeddings.PositionalEmbedding`, :class:`~.embeddings.FourierEmbedding`).
        embedding_dim: width of the sinusoidal features (the embedding MLP outputs ``hidden``).
        num_classes: number of classes K for a class-conditional net; label K means "no label".
        num_noise_labels: noise labels per example, each embedded, the embeddings summed: 1,
            or 2 for MeanFlow's (t, t − r) (:class:`~diffusion_pl.formulations.MeanFlow`).

    Reference: Ho et al. (2020); Song et al. (2021) for the Fourier-feature variant.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        embedding: NoiseFeatures = PositionalEmbedding,
        embedding_dim: int = 128,
        num_classes: int | None = None,
        num_noise_labels: int = 1,
    ) -> None:
        super().__init__(
            dim, dim, hidden, depth, embedding, embedding_dim, num_classes, num_noise_labels
        )
        self.num_classes = num_classes
        nn.init.zeros_(self.fc_out.weight)
        nn.init.zeros_(self.fc_out.bias)

    def check_data_shape(self, data_shape: tuple[int, ...]) -> None:
        """Raise a ValueError, naming the setting to change, unless examples fit this MLP.

        Args:
            data_shape: one example's shape, ``(D,)``.
        """
        if len(data_shape) != 1:
            raise ValueError(
                f"the MLP takes vectors (D,) but the data are shaped {tuple(data_shape)}: "
                "use diffusion_pl.nets.UNet for images"
            )
        if data_shape[0] != self.dim:
            raise ValueError(
                f"the data are {data_shape[0]}-dimensional but the MLP has dim={self.dim}: "
                f"set model.init_args.net.init_args.dim: {data_shape[0]}"
            )
