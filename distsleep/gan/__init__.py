"""Physio-GAN (ISATSleepNet): synthetic minority-stage epochs against class imbalance.

    model.py    generator, critic and the losses (pure functions)
    config.py   GanTrainConfig: data, loss weights, optimisation, cluster, tracking
    data.py     training-split epochs of the target stages, GAN-unit scaling
    train.py    the Ray Train job (run_gan_training) and the generator bundle
    psd.py      real vs generated Welch PSD comparison, distance in dB and its real-vs-real floor
    augment.py  synthetic training shards + augmentation.json, and augmented_train_urls for the training loop
    effect.py   a model trained with vs without an augmentation, per seed: per-class F1 and paired differences
    cli.py      `train` / `augment` / `effect` subcommands (jobs/gan.py, `distsleep gan`)
"""

from distsleep.gan.augment import AugmentConfig, augmented_train_urls, load_augmentation, load_generator, run_augment
from distsleep.gan.config import GanTrainConfig
from distsleep.gan.model import PhysioGanConfig

__all__ = ["AugmentConfig", "GanTrainConfig", "PhysioGanConfig", "augmented_train_urls", "load_augmentation",
           "load_generator", "run_augment"]
