"""Physio-GAN (ISATSleepNet): synthetic minority-stage epochs against class imbalance.

    model.py    generator, critic and the losses (pure functions); PhysioGanConfig
    config.py   GanTrainConfig: data, loss weights, optimisation, and the shared cluster and tracking sections
    data.py     training-split epochs of the target stages, GAN-unit scaling
    train.py    the Ray Train job (run_gan_training, on the driver steps of distsleep.train.driver)
    psd.py      real vs generated Welch PSD comparison, distance in dB and its real-vs-real floor
    augment.py  synthetic training shards + augmentation.json (reading them back: distsleep.shards.augmented)
    effect.py   a model trained with vs without an augmentation, per seed: per-class F1 and paired differences

The generator bundle's format and its resolution (file, folder, checkpoint, MLflow run) are
`distsleep.bundle`'s; the command line is `distsleep.cli.gan` (jobs/gan.py, `distsleep gan`).
"""
