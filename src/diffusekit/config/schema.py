"""The training configuration: typed dataclasses, one per concern, all in plain values.

Every field is a number, a string, a bool, None or a free-form ``*_options`` dict, so a configuration
round-trips through YAML / TOML / JSON and the checkpoint exactly. Durations and intervals count
training images (EDM's kimg convention), never steps, so changing the batch size keeps the schedule.
Names are checked against the library's own registries in :func:`diffusekit.config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Config", "DataConfig", "ObjectiveConfig", "NetworkConfig", "OptimConfig", "EMAConfig", "RunConfig",
           "SampleConfig", "EvalConfig", "CascadeConfig", "AutoencoderConfig", "LatentConfig",
           "VideoConfig"]


@dataclass
class DataConfig:
    name: str = "mnist"  # a built-in dataset (diffusekit.data.DATASETS) or an image folder
    split: str = "train"  # the dataset split to train on (built-ins: train or test)
    limit: int | None = None  # use only the first N examples of the split (small-data runs, tests)
    resolution: int | None = None  # None: the dataset's own (required for image folders)
    channels: int | None = None  # None: the dataset's own; 1 or 3 converts
    resize: Literal["resize", "pad"] = "resize"  # how to reach `resolution` (pad: e.g. MNIST 28 -> 32)
    conditional: bool = True  # use the class labels (when the dataset has them)
    workers: int = 0  # DataLoader worker processes preparing batches (0: in the training process)
    intensity: list[float] | None = None  # [low, high(, contrast)]: random brightness per image (data.intensity)
    augment: float = 0.0  # p of EDM's non-leaking augmentation (labels go to the network); 0 = off
    augment_options: dict = field(default_factory=dict)  # kinds, translate, scale_std (diffusekit.data.augment)
    # text-conditioned on captions of each image's class (diffusekit.data.captions); the class label itself is then
    # not given to the network (a text-only model, num_classes 0)
    captions: bool = False
    # image folders: files that cannot be used (unreadable, smaller than min_size pixels on their short side, not
    # images, empty class folders) are skipped with a warning that counts them; strict makes them an error
    strict: bool = False
    min_size: int = 8  # image folders: the smallest usable short side, in pixels
    # image folders (docs/data.md): memory decodes every image up front; stream decodes at each read (flat memory);
    # cache decodes once into resized uint8 shards on disk, memory-mapped (flat memory, cheap reads)
    storage: Literal["memory", "stream", "cache"] = "memory"
    cache_dir: str | None = None  # storage cache: where the shards live (None: $DIFFUSEKIT_CACHE/image-folders)
    xflip: bool = False  # EDM's x-flips: the dataset doubles, image i + N is image i mirrored
    # image folders: a non-square image's fit: crop (centre) | random_crop (fixed per file) | pad | stretch
    fit: Literal["crop", "random_crop", "pad", "stretch"] = "crop"
    # image folders: the resize filter: auto | nearest | box | bilinear | hamming | bicubic | lanczos
    filter: str = "auto"
    background: list[int] = field(default_factory=lambda: [255, 255, 255])  # image folders: RGB under transparency, pad
    # image folders: the held-out (test) split: this share of the files, by a hash of their paths; or a folder
    val_fraction: float = 0.0
    val_dir: str | None = None


@dataclass
class ObjectiveConfig:
    # the Gaussian path alpha(t), sigma(t): rectified_flow | cosine | linear_vp | edm | learned (VDM's, trained with
    # the model; docs/objectives.md)
    schedule: str = "rectified_flow"
    # e.g. {zero_terminal_snr: true, shift: 3}; learned: {hidden, gamma_min, gamma_max, learn_endpoints, lr_scale}
    schedule_options: dict = field(default_factory=dict)
    parameterization: str = "velocity"  # what the network predicts: x0 | eps | v | velocity | score | edm
    parameterization_options: dict = field(default_factory=dict)  # constructor options of the parameterization
    time_distribution: str = "logit_normal"  # the density of training times: uniform | lognormal | logit_normal
    time_mode: str = "stratified"  # iid | stratified | low_discrepancy | importance
    time_options: dict = field(default_factory=dict)  # the distribution's options, e.g. {mean: 0, std: 1}
    weighting: str = "unit"  # the per-time loss weight: unit | snr | min_snr | edm | sigmoid | elbo
    weighting_options: dict = field(default_factory=dict)  # the weighting's options, e.g. {gamma: 5} for min_snr
    sigma_data: float = 0.5  # the data's standard deviation assumed by the edm parameterization and weighting
    noise_conditioning: Literal["logsnr", "t", "timestep"] = "logsnr"  # what the network is told about the noise level
    p_uncond: float = 0.1  # condition dropout for classifier-free guidance (Ho & Salimans 2022)
    input_perturbation: float = 0.0  # DDPM-IP's gamma (Ning et al. 2023; 0.1 there): x_t + gamma sigma xi as input


@dataclass
class NetworkConfig:
    # the network family; autoencoder: train an autoencoder (the `autoencoder` section) instead of a diffusion model
    kind: Literal["unet", "dit", "autoencoder", "video_unet"] = "unet"
    preset: str = "tiny"  # diffusekit.networks.unet.PRESETS / dit.PRESETS / autoencoder.PRESETS / video.PRESETS
    options: dict = field(default_factory=dict)  # constructor overrides, e.g. {model_channels: 64}


@dataclass
class OptimConfig:
    batch_size: int = 32  # images per optimizer step (over all accumulation rounds)
    accumulation: int = 1  # gradient accumulation rounds per optimizer step
    optimizer: Literal["adamw", "adam"] = "adamw"  # the optimizer (weight decay 0)
    lr: float = 2e-4  # the peak learning rate
    warmup_images: int = 0  # linear learning-rate warm-up length, in images
    decay: Literal["constant", "cosine", "inverse_sqrt"] = "constant"  # the learning-rate decay after warm-up
    decay_images: int | None = None  # cosine: the decay length (default: run.total_images); inverse_sqrt: t_ref
    grad_clip: float | None = 1.0  # the gradient norm clip (None: no clipping)
    # a step whose loss or gradient is not finite is skipped (counted, logged); this many in a row stop the run
    nonfinite_limit: int = 10


@dataclass
class EMAConfig:
    half_lives: dict = field(default_factory=lambda: {"ema": 50_000.0})  # name -> half-life in images
    rampup: float | None = 0.05  # EDM: the half-life is at most rampup * images seen
    # post-hoc EMA (EDM2, docs/ema.md): track power-function EMAs and snapshot them into <run>/posthoc/, from which
    # `diffusekit ema` reconstructs an EMA of any other length after training
    posthoc: bool = False
    posthoc_sigma_rels: list[float] = field(default_factory=lambda: [0.05, 0.10])  # tracked lengths, in (0, 0.2887]
    posthoc_every: int | None = None  # images between snapshots (None: run.total_images / 64)
    posthoc_budget_mb: float | None = None  # disk budget of the snapshots; older ones are thinned (None: no limit)


@dataclass
class RunConfig:
    total_images: int = 1_000  # the length of the run, in training images
    checkpoint_every: int = 500  # images between checkpoints
    keep_checkpoints: int = 3  # the newest checkpoints kept (milestones are kept as well)
    milestone_every: int | None = None  # checkpoints at multiples of this are never pruned
    log_every: int = 1_000  # images between metric records (JSONL, TensorBoard)
    sample_every: int | None = None  # images between sample grids from the EMA (None: at checkpoints)
    seed: int = 0  # seeds the initial weights, the data order and the noise of every step
    device: str = "cpu"  # cpu | cuda | cuda:N
    # bf16: autocast of the network's forward pass; auto: bf16 where the device computes it natively (CPUs with
    # AVX512-BF16 / AMX, CUDA compute capability >= 8), else fp32 (diffusekit.models.execution)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    channels_last: bool = False  # the network's weights and input in NHWC order (faster convolutions on some machines)
    compile: bool = False  # torch.compile the network (the first steps pay the compilation)
    # several processes: ddp (a whole copy per process) or fsdp (parameters, gradients and optimizer state sharded
    # with fully_shard; the EMAs stay whole on every process); checkpoints are the same either way
    parallel: Literal["ddp", "fsdp"] = "ddp"
    dump_bad_batch: bool = True  # non-finite steps stopped the run: its last batch -> <run>/nonfinite-*.safetensors
    # fine-tuning: a run directory or checkpoint whose weights start this run (the tensors of the same name and
    # shape; report in <run>/init_from.json); applied only while the run has no checkpoint of its own
    init_from: str | None = None
    init_weights: str | None = None  # which of the source's weights: "model" or an EMA name (None: its sample EMA)
    init_optimizer: bool = False  # also the source's optimizer state (every parameter must match in shape)


@dataclass
class SampleConfig:
    sampler: str = "multistep"  # the sampler for grids and `diffusekit sample` (docs/samplers.md)
    steps: int = 20  # sampler steps
    spacing: str = "uniform"  # the time grid: uniform | karras | logsnr | trailing
    guidance: float = 1.0  # guidance weight w: x0 = u + w (c - u); 1 = none (docs/guidance.md)
    guidance_rescale: float = 0.0  # phi of CFG rescale (Lin et al. 2023; 0 = off)
    guidance_schedule: str = "constant"  # constant | increasing (Muse) | oscillating (Imagen Video)
    guidance_low: float = 1.0  # oscillating: the low weight
    guidance_warmup: int = 0  # oscillating: steps at the high weight before alternating
    guidance_interval: list[float] | None = None  # [lo, hi]: guide only where lo < ve_sigma <= hi (Kynkaanniemi 2024)
    threshold: str = "none"  # none | static | dynamic (Imagen) on x0_hat
    threshold_percentile: float = 0.995  # dynamic thresholding's percentile p
    autoguide: str | None = None  # checkpoint / run directory of the guiding model: w becomes autoguidance (EDM2)
    autoguide_ema: str | None = None  # the guide's EMA name, or "model" (None: its sample.ema / first EMA)
    eps_scale: float = 1.0  # epsilon scaling's lambda (Ning et al. 2024): eps_hat / lambda at sampling; 1 = off
    options: dict = field(default_factory=lambda: {"order": 2, "corrector": True})  # the sampler's options
    ema: str | None = None  # which EMA samples (None: the first)
    grid_columns: int = 10  # samples per class row of the grids


@dataclass
class EvalConfig:
    """In-training evaluation. FID/KID every ``every`` images from ``num_samples`` EMA samples (the same seeds
    each time) against cached reference statistics; per-noise-level training and validation losses every
    ``loss_every`` images."""

    every: int | None = None  # images between FID/KID evaluations (None: none)
    metrics: str = "fid,kid"  # comma-separated: fid, kid, precision_recall
    num_samples: int = 1000  # samples per evaluation
    extractor: Literal["inception", "inception-fast"] = "inception-fast"  # fast: NOT comparable to published FIDs
    extractor_resolution: int | None = None  # inception-fast input size (None: 128)
    preprocess: Literal["pytorch", "tf"] = "pytorch"  # the Inception's resize: pytorch-fid's (pytorch) or TensorFlow's
    reference: str | None = None  # statistics .npz (diffusekit ref-stats); None: computed from the dataset, cached
    reference_split: str = "test"  # the dataset split of the computed reference (image folders: train)
    reference_count: int | None = None  # reference images (None: num_samples)
    steps: int | None = None  # sampler steps for evaluation (None: sample.steps)
    guidance: float | None = None  # None: sample.guidance
    patience: int | None = None  # stop training after this many evaluations without a better FID (None: never)
    keep_best: bool = True  # keep the checkpoint with the best FID in <run>/best/
    loss_every: int | None = 5_000  # images between per-noise-level losses (None: none)
    loss_bins: int = 8  # log-SNR bins
    loss_per_bin: int = 64  # images per bin and set (train / validation)
    validation: str = "test"  # held-out split for the validation loss; "none": training loss only


@dataclass
class CascadeConfig:
    """A super-resolution stage of a cascade (diffusekit.cascade): the network also sees the training image
    box-downsampled to ``low_resolution``, noise-augmented (Ho et al. 2022) and upsampled back."""

    low_resolution: int | None = None  # None: not a cascade stage
    noise_aug: bool = True  # noise-conditioning augmentation of the low-resolution image
    aug_max: float = 0.5  # training levels s ~ U[0, aug_max] (cosine VP path)
    sample_snr: float = 5.0  # the fixed level at sampling, as an SNR alpha^2 / sigma^2


@dataclass
class AutoencoderConfig:
    """Training an autoencoder (``network.kind: autoencoder``; LDM, Rombach et al. 2022; VQGAN, Esser et al. 2021):
    reconstruction + KL (or the codebook's loss with ``network.options.quantizer``) + a perceptual term + a
    patch-GAN term from ``gan_start_images`` on, with VQGAN's adaptive weight (diffusekit.training.autoencoder_loss)."""

    reconstruction: Literal["l1", "l2"] = "l1"  # the pixel loss
    kl_weight: float = 1e-6  # the KL term's weight (LDM's KL-reg)
    # offline perceptual term: Inception-v3 features (LPIPS formula, no learned heads), 1 - SSIM, 1 - MS-SSIM (161+ px)
    perceptual: Literal["none", "inception", "ssim", "ms_ssim"] = "none"
    perceptual_weight: float = 1.0
    gan_weight: float = 0.5  # the discriminator term's weight (0: no GAN, no discriminator)
    gan_start_images: int = 50_000  # training images before the GAN terms switch on
    gan_loss: Literal["hinge", "non_saturating"] = "hinge"
    adaptive_weight: bool = True  # VQGAN's ratio of gradient norms at the decoder's last layer
    disc_channels: int = 64  # the patch discriminator's first width
    disc_layers: int = 3  # its stride-2 layers (receptive field 70 px at 3)
    disc_lr: float | None = None  # the discriminator's peak learning rate (None: optim.lr)
    # the latent statistics stored with the autoencoder at every checkpoint, from the first stats_images training
    # images: channel = per-channel mean and std, scalar = LDM's scale_factor (one std, no shift)
    latent_stats: Literal["channel", "scalar"] = "channel"
    stats_images: int = 1024


@dataclass
class LatentConfig:
    """Latent diffusion: the diffusion model is trained on, and samples, the latents of a frozen autoencoder."""

    autoencoder: str | None = None  # our autoencoder's run directory or checkpoint, or a diffusers AutoencoderKL dir
    ema: str | None = None  # which of our autoencoder's EMAs encodes and decodes ("model": raw weights; None: first)
    flip: bool = True  # the latent cache also holds the latents of the x-flipped images (the dataset doubles)
    cache_dir: str | None = None  # where latent caches live (None: $DIFFUSEKIT_CACHE/latents)
    encode_batch: int = 64  # images per encoder call when building the cache


@dataclass
class VideoConfig:
    """Video: the model draws clips of ``frames`` frames (``network.kind: video_unet``; docs/video.md). A run's
    ``total_images`` and batch sizes then count clips (an image group of F frames counts as one)."""

    frames: int | None = None  # the clip length F; None: an image model
    # the clip dataset's options (moving-mnist: digits, digit_size, count, speed; cahn-hilliard: frame_step, stride;
    # video folders: stride, min_frames)
    options: dict = field(default_factory=dict)
    # joint video + image training (Ho et al. 2022): this share of every batch are groups of F independent images,
    # whose temporal attention is masked to the identity
    image_fraction: float = 0.0
    # where the images come from: an image or clip dataset, or a folder of images (None: the training clips' frames)
    image_data: str | None = None
    image_options: dict = field(default_factory=dict)  # image_data's options (a clip dataset's: e.g. a larger count)
    mask_images: bool = True  # false: image groups go in as if they were clips (the mask's ablation)
    # prediction: the network also sees the first k frames (k uniform in 1..context_frames) on p_context of the clips
    context_frames: int = 0
    p_context: float = 0.5


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
