"""Inception-v3 as FID uses it, in Flax, and the converter from the standard FID weights.

FID and IS are defined by one network: the 2015 TensorFlow Inception-v3 graph
(``inception-2015-12-05``) that TTUR's FID code and the Inception Score use. Its weights
are distributed for PyTorch by pytorch-fid as ``pt_inception-2015-12-05-6726825d.pth``,
the file FID codebases load; ``FIDInceptionV3`` is that network layer for layer, with the
FID-specific blocks:

* the average pools inside ``Mixed_5b..5d``, ``Mixed_6b..6e`` and ``Mixed_7b`` divide by
  the number of real (unpadded) pixels (``count_include_pad=False``);
* the pool branch of ``Mixed_7c`` is a max pool;
* 1008 output classes; every conv is conv (no bias) + batch norm (eps 1e-3) + ReLU.

Input: images in [-1, 1] (channels last; 1 channel is repeated to 3), resized to 299x299
with bilinear interpolation at half-pixel centres and no antialiasing, which is what
pytorch-fid's ``F.interpolate(..., align_corners=False)`` does. (TTUR's TensorFlow code
resizes slightly differently; numbers from the two differ in the second decimal, so
compare FIDs computed with one protocol.) Output: the 2048-d ``pool_3`` features that
FID uses and the 1008 logits that IS uses.

Weights are never downloaded (no network here): ``load_fid_inception(path)`` reads a
file the user has fetched, either the ``.pth`` (reading it needs ``torch``) or a
``.npz`` of the same state dict, which ``python -m diffjax.evaluation.inception
convert IN.pth OUT.npz`` writes once so that evaluation runs without torch. A missing
file raises ``FidWeightsNotFoundError`` saying where to get it.

Parameter names follow the state dict: ``Mixed_6b.branch7x7_2.conv.weight`` (PyTorch
[O, I, kh, kw]) becomes ``params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]``
(Flax [kh, kw, I, O]); ``.bn.{weight, bias, running_mean, running_var}`` become
``bn.{scale, bias, mean, var}``; ``fc.weight`` [1008, 2048] becomes ``fc.kernel``
[2048, 1008].
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffjax.errors import UserError
from diffjax.files import written_atomically

__all__ = [
    "FID_IMAGE_SIZE",
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "FIDInceptionV3",
    "FidWeightsError",
    "FidWeightsNotFoundError",
    "abstract_inception_params",
    "load_fid_inception",
    "params_from_state_dict",
    "read_state_dict",
    "state_dict_from_params",
    "weights_digest",
]

FID_IMAGE_SIZE = 299
NUM_FEATURES = 2048
NUM_LOGITS = 1008
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILENAME}"
_BN_EPS = 1e-3
# State-dict entries the FID network does not use.
_IGNORED_SUFFIXES = (".num_batches_tracked",)
_IGNORED_PREFIXES = ("AuxLogits.",)


class FidWeightsError(UserError, ValueError):
    """A weights file that does not fit the FID Inception network."""


class FidWeightsNotFoundError(UserError, FileNotFoundError):
    """The FID Inception weights file is not where the config says."""


# ---------------------------------------------------------------------------
# The network.


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics: (x - mean) / sqrt(var + eps) * scale + bias."""

    eps: float = _BN_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        mean = self.param("mean", nn.initializers.zeros, (features,))
        var = self.param("var", nn.initializers.ones, (features,))
        multiplier = scale * jax.lax.rsqrt(var + self.eps)
        return x * multiplier + (bias - mean * multiplier)


class BasicConv(nn.Module):
    """Conv without bias, frozen batch norm, ReLU. ``padding`` is (pad_h, pad_w)."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad_h, pad_w = self.padding
        x = nn.Conv(
            self.features, self.kernel_size, strides=self.strides, padding=((pad_h, pad_h), (pad_w, pad_w)),
            use_bias=False, name="conv",
        )(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1, dividing by the number of unpadded pixels."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
    padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
    """Mixed_5b..5d: 1x1, 5x5, double 3x3 and pool branches (64 + 64 + 96 + pool_features)."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        branch1x1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        branch5x5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        branch5x5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
        branch3x3dbl = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)
        branch_pool = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: the 35 -> 17 reduction (384 + 96 + input channels)."""

    @nn.compact
    def __call__(self, x):
        branch3x3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
        branch3x3dbl = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(branch3x3dbl)
        return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..6e: factorised 7x7 branches with ``channels_7x7`` inner width (4 x 192 out)."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        branch1x1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        branch7x7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        branch7x7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
        branch7x7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
        dbl = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        dbl = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
        dbl = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
        dbl = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
        dbl = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
        branch_pool = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: the 17 -> 8 reduction (320 + 192 + input channels)."""

    @nn.compact
    def __call__(self, x):
        branch3x3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        branch3x3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(branch3x3)
        branch7x7x3 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        branch7x7x3 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
        branch7x7x3 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
        branch7x7x3 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (average pool branch) and Mixed_7c (max pool branch): 320 + 768 + 768 + 192."""

    pool: str  # "avg" or "max"

    @nn.compact
    def __call__(self, x):
        branch1x1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        branch3x3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        branch3x3 = jnp.concatenate([
            BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
            BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3),
        ], axis=-1)
        dbl = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        dbl = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
        dbl = jnp.concatenate([
            BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
            BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl),
        ], axis=-1)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, 1)
        branch_pool = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


def resize_for_inception(images: jax.Array, size: int = FID_IMAGE_SIZE) -> jax.Array:
    """[N, H, W, C] -> [N, size, size, 3]: bilinear at half-pixel centres, no antialiasing.

    One channel is repeated to three; values are not changed otherwise.
    """
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    if images.shape[-1] != 3:
        raise ValueError(f"Inception takes 1- or 3-channel images, got shape {images.shape}")
    if images.shape[1:3] == (size, size):
        return images
    return jax.image.resize(images, (images.shape[0], size, size, 3), "bilinear", antialias=False)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3. ``__call__(images) -> {"pool": [N, 2048], "logits": [N, 1008]}``.

    Attributes:
      image_size: side the input is resized to. 299 is the FID protocol; a smaller side
        (at least 75) runs the same network faster but gives features not comparable to
        published FIDs (tests use it).

    Args of ``__call__``:
      images: float [N, H, W, C], C in {1, 3}, values in [-1, 1].
    """

    image_size: int = FID_IMAGE_SIZE

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        if self.image_size < 75:
            raise ValueError(f"Inception-v3 needs images of at least 75x75, got image_size={self.image_size}")
        x = resize_for_inception(images.astype(jnp.float32), self.image_size)
        x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3(x, 2)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3(x, 2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(NUM_LOGITS, name="fc")(pool)
        return {"pool": pool, "logits": logits}


def abstract_inception_params() -> dict[str, Any]:
    """The network's parameter tree as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
    model = FIDInceptionV3()
    images = jax.ShapeDtypeStruct((1, FID_IMAGE_SIZE, FID_IMAGE_SIZE, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]


# ---------------------------------------------------------------------------
# Weights: state dict <-> Flax params.

_LEAF_TO_TORCH = {
    ("conv", "kernel"): ("conv", "weight"),
    ("bn", "scale"): ("bn", "weight"),
    ("bn", "bias"): ("bn", "bias"),
    ("bn", "mean"): ("bn", "running_mean"),
    ("bn", "var"): ("bn", "running_var"),
    ("fc", "kernel"): ("fc", "weight"),
    ("fc", "bias"): ("fc", "bias"),
}


def _torch_name(path: tuple[str, ...]) -> str:
    return ".".join(path[:-2] + _LEAF_TO_TORCH[path[-2:]])


def _to_torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 4:  # [kh, kw, I, O] -> [O, I, kh, kw]
        return value.transpose(3, 2, 0, 1)
    if path[-1] == "kernel":  # dense [I, O] -> [O, I]
        return value.T
    return value


def _from_torch_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if path[-1] == "kernel":
        return value.T
    return value


def params_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Flax params of ``FIDInceptionV3`` from a pytorch-fid state dict (numpy arrays).

    Every parameter must be present with its exact shape; entries the network does not
    use (``num_batches_tracked``, ``AuxLogits.*``) are ignored; any other entry is an error.

    Raises:
      FidWeightsError: naming the missing, unexpected or mis-shaped entries.
    """
    expected = traverse_util.flatten_dict(abstract_inception_params())
    by_torch_name = {_torch_name(path): path for path in expected}
    used = {k for k in state_dict if not (k.endswith(_IGNORED_SUFFIXES) or k.startswith(_IGNORED_PREFIXES))}
    missing = sorted(set(by_torch_name) - used)
    unexpected = sorted(used - set(by_torch_name))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
    flat = {}
    for name, path in by_torch_name.items():
        if name not in used:
            continue
        value = _from_torch_layout(path, np.asarray(state_dict[name], np.float32))
        if value.shape != expected[path].shape:
            problems.append(f"{name} has shape {np.shape(state_dict[name])}, the network needs "
                            f"{_to_torch_layout(path, np.zeros(expected[path].shape)).shape}")
            continue
        flat[path] = value
    if problems:
        raise FidWeightsError(
            "these weights are not the FID Inception-v3 (pytorch-fid's " + FID_WEIGHTS_FILENAME + "): "
            + "; ".join(problems)
        )
    return traverse_util.unflatten_dict(flat)


def state_dict_from_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of ``params_from_state_dict``: PyTorch names and layouts, float32 numpy."""
    return {
        _torch_name(path): np.ascontiguousarray(_to_torch_layout(path, np.asarray(value, np.float32)))
        for path, value in traverse_util.flatten_dict(params).items()
    }


def _missing_weights_message(path: str) -> str:
    return (
        f"FID Inception weights not found at {path!r}. FID/IS need pytorch-fid's weights file "
        f"{FID_WEIGHTS_FILENAME}: download it on a machine with network access from {FID_WEIGHTS_URL} "
        "(nothing is downloaded here), copy it to this machine, and set eval.fid_weights to its path. "
        "Reading the .pth needs torch; to evaluate without torch, convert it once with "
        "`python -m diffjax.evaluation.inception convert IN.pth OUT.npz` and point eval.fid_weights at OUT.npz."
    )


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a state dict from a ``.pth`` (with torch) or a ``.npz`` into numpy arrays.

    Raises:
      FidWeightsNotFoundError: no file at ``path`` (the message says where to get it).
      FidWeightsError: an unreadable file, or a ``.pth`` without torch installed.
    """
    path = os.path.expanduser(path)
    if not path or not os.path.isfile(path):
        raise FidWeightsNotFoundError(_missing_weights_message(path))
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    try:
        import torch  # optional: only to read a .pth weights file
    except ImportError as error:
        raise FidWeightsError(
            f"reading {path} (a PyTorch file) needs torch, which is not installed: `pip install torch`, "
            "or convert it once elsewhere with `python -m diffjax.evaluation.inception convert IN.pth OUT.npz`"
        ) from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the file is not a state dict
        raise FidWeightsError(f"could not read {path} as a PyTorch state dict: {error}") from error
    if not isinstance(loaded, Mapping):
        raise FidWeightsError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return {name: value.detach().cpu().numpy() for name, value in loaded.items()}


def weights_digest(path: str) -> str:
    """12 hex digits of the SHA-256 of the weights file (names cached reference statistics).

    The file is hashed once per process while its size and modification time stay the same.
    """
    path = os.path.expanduser(path)
    stat = os.stat(path)
    return _file_digest(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # cache key only
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def load_fid_inception(path: str) -> dict[str, Any]:
    """Flax params of the FID Inception-v3 from the weights file at ``path`` (.pth or .npz).

    Raises:
      FidWeightsNotFoundError: no file at ``path``.
      FidWeightsError: the file is not the FID network's weights.
    """
    return params_from_state_dict(read_state_dict(path))


def _convert_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m diffjax.evaluation.inception",
        description="Convert pytorch-fid's Inception weights (.pth, needs torch) into a .npz that "
        "diffjax reads without torch. The result is checked against the network before it is written.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="IN.pth -> OUT.npz")
    convert.add_argument("source")
    convert.add_argument("destination")
    args = parser.parse_args(argv)
    state_dict = read_state_dict(args.source)
    params = params_from_state_dict(state_dict)  # refuses files that do not fit
    out = state_dict_from_params(params)
    with written_atomically(args.destination) as f:
        np.savez(f, **out)
    count = sum(v.size for v in out.values())
    print(f"wrote {args.destination}: {len(out)} arrays, {count:,} parameters, sha256 {weights_digest(args.destination)}")


if __name__ == "__main__":
    _convert_main()
