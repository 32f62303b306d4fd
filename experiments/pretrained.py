"""The released DDPM, improved-DDPM and ADM networks, with the diffusion each was trained with.

    python launch.py --config experiments/pretrained.py:ddpm_cifar10 --workdir runs/ddpm_cifar10_released \
        --mode=import --config.pretrained.path=PATH/google-ddpm-cifar10-32
    python launch.py --config experiments/pretrained.py:ddpm_cifar10 --workdir runs/ddpm_cifar10_released \
        --mode=sample --config.sample.method=ddpm --config.sample.steps=1000

``--mode=import`` converts the downloaded weights into the workdir's step-0 checkpoint
(``diffjax.run.pretrained``); then every mode runs on it: ``sample`` (any sampler or solver),
``eval`` (NLL, FID with Inception weights given) and ``train`` (fine-tuning). Where to get each
file, and what was checked here: docs/pretrained.md.

Variants (the diffusion settings are the papers' and the repositories' READMEs'):

=====================  ==========================================  ==================================
variant                weights                                     diffusion
=====================  ==========================================  ==================================
ddpm_cifar10           diffusers google/ddpm-cifar10-32            linear, T=1000, eps, fixed_large
ddpm_celebahq256       diffusers google/ddpm-celebahq-256          linear, T=1000, eps, fixed_large
ddpm_lsun_church256    diffusers google/ddpm-church-256            linear, T=1000, eps, fixed_large
iddpm_cifar10          improved-diffusion cifar10_uncond_50M_500K  cosine, T=4000, learned range,
                       (.pt)                                       t rescaled to 0..1000
iddpm_imagenet64       improved-diffusion                          cosine, T=4000, learned range,
                       imagenet64_uncond_100M_1500K (.pt)          t rescaled to 0..1000
adm_imagenet64         guided-diffusion 64x64_diffusion.pt         cosine, T=1000, learned range,
                       (class-conditional, 1000 classes)           t as is
adm_imagenet64_        guided-diffusion 64x64_classifier.pt        its noise: cosine, T=1000; told
classifier             (noisy classifier, attention pooling)       the integer step (chain_step)
=====================  ==========================================  ==================================

The DDPM networks are DDPM's TensorFlow layout: the timestep sinusoid [sin, cos] with divisor
half - 1 (``model.sinusoid_cos_first=False``, ``sinusoid_freq_shift=1``); diffjax's own
ddpm_cifar10 runs use improved DDPM's [cos, sin]. ADM's classifier guides ``adm_imagenet64``
(``--config.sample.classifier_workdir=WORKDIR_OF_THE_IMPORTED_CLASSIFIER
--config.sample.classifier_scale=1``; guided-diffusion's README uses scale 1.0 at 64x64). ADM's
upsampler converts (``convert_openai.load_openai_superres``) but does not import yet: a
workdir's recipe has no low-resolution input.
"""

import ml_collections

from diffjax.models.convert_openai import classifier_flags, classifier_hyperparameters, unet_flags, unet_hyperparameters
from diffjax.run.config import base_config, set_family, set_model
from diffjax.run.experiments import load_experiment

_DDPM_TF_SINUSOID = dict(sinusoid_cos_first=False, sinusoid_freq_shift=1)
# improved-diffusion's README flags (script_util's defaults: num_heads 4, attention at 16,8,
# scale-shift norm) and guided-diffusion's for the class-conditional 64x64 model.
_IDDPM_FLAGS = dict(num_channels=128, num_res_blocks=3, learn_sigma=True, attention_resolutions="16,8",
                    num_heads=4, use_scale_shift_norm=True)
_ADM64_FLAGS = dict(image_size=64, num_channels=192, num_res_blocks=3, learn_sigma=True, class_cond=True,
                    attention_resolutions="32,16,8", num_head_channels=64, resblock_updown=True,
                    use_new_attention_order=True, use_scale_shift_norm=True, dropout=0.1)
# guided-diffusion's README: the 64x64 classifier's flags
_ADM64_CLASSIFIER_FLAGS = dict(image_size=64, classifier_attention_resolutions="32,16,8", classifier_depth=4,
                               classifier_width=128, classifier_pool="attention", classifier_resblock_updown=True,
                               classifier_use_scale_shift_norm=True)
VARIANTS = ("ddpm_cifar10", "ddpm_celebahq256", "ddpm_lsun_church256", "iddpm_cifar10", "iddpm_imagenet64",
            "adm_imagenet64", "adm_imagenet64_classifier")


def get_config(arg: str | None = None):
    if arg not in VARIANTS:
        raise ValueError(f"pretrained has the variants {list(VARIANTS)} (got {arg!r})")
    if arg.startswith("ddpm_"):
        config = load_experiment(arg).get_config()
        config.model.update(**_DDPM_TF_SINUSOID)
        config.diffusion.var_type = "fixed_large"  # DDPM sampled its CIFAR-10 and 256 models with beta_t
        pretrained = dict(format="diffusers", path="", args=ml_collections.ConfigDict())
    elif arg.startswith("iddpm_"):
        config = load_experiment(arg).get_config("hybrid_cosine")
        size = config.data.image_size
        pretrained = _openai(config, unet_flags(image_size=size, **_IDDPM_FLAGS, dropout=config.model.dropout))
    elif arg == "adm_imagenet64_classifier":
        args = classifier_flags(**_ADM64_CLASSIFIER_FLAGS)
        config = _adm_classifier(args)
        pretrained = dict(format="openai_classifier", path="", args=ml_collections.ConfigDict(args))
    else:
        config = load_experiment("iddpm_imagenet64").get_config("hybrid_cosine")
        set_family(config, "discrete", timesteps=1000, schedule="cosine", objective="hybrid",
                   var_type="learned_range", rescale_timesteps=False)
        config.data.num_classes = 1000  # downsampled_imagenet has no labels: sample or fine-tune elsewhere
        pretrained = _openai(config, unet_flags(**_ADM64_FLAGS))
    config.experiment = f"pretrained_{arg}"
    config.pretrained = ml_collections.ConfigDict(pretrained)
    return config


def _adm_classifier(args: dict):
    """ADM's noisy classifier of ImageNet 64x64 (``EncoderUNetModel`` ``args``) as a classifier
    experiment: its own diffusion (cosine, T = 1000), told the integer step."""
    config = base_config()
    config.data.update(name="imagenet2012", image_size=args["image_size"], num_classes=args["out_channels"])
    set_family(config, "classifier", schedule="cosine", timesteps=1000, time_input="chain_step")
    model, _ = classifier_hyperparameters(args)
    set_model(config, "digits_classifier", **_hyperparameters(model))  # every key overridden
    config.model.class_dropout = 0.0
    return config


def _openai(config, args: dict) -> dict:
    """The ``pretrained`` section of a guided_diffusion ``UNetModel`` with constructor ``args``,
    whose network becomes ``config.model`` (the converter's hyperparameters of those args)."""
    model, _, _ = unet_hyperparameters(args)
    set_model(config, "tiny", **_hyperparameters(model))  # a UNet preset with every key overridden
    return dict(format="openai", path="", args=ml_collections.ConfigDict(args))


def _hyperparameters(model: dict) -> dict:
    """A converter's ``model`` (``arch`` and every hyperparameter) as ``set_model``'s overrides."""
    return {k: v for k, v in model.items() if k != "arch"}
