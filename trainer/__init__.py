"""digit-serve trainer: TFDS MNIST -> tf.data -> CNN under tf.distribute -> SavedModel.

    __main__, cli   `python -m trainer [train | data import | evaluate]`
    config          the typed configuration: each field a flag, an env var, its --help
    errors          every exit status (ExitCode) and the exceptions that carry them
    outputs         the files a run writes, by name, and its progress events (no TensorFlow)
    train           one run, top to bottom: strategy, data, recipe, resume, epochs, export
    strategy        the tf.distribute strategy and the device settings, from the hardware
    data            TFDS MNIST, the tf.data pipelines, augmentation, the idx import
    model           the recipe: the CNN, its optimizer, schedule and weight average
    ema             the weight average (WeightAverage)
    loop            compiled train/eval steps and one epoch
    progress        the progress bar or heartbeat lines during an epoch
    preemption      SIGTERM/Ctrl-C -> a flag the loop checks between compiled calls
    jobdir          checkpoints, run.json, finished.json, the lock, a killed run's leftovers
    summaries       TensorBoard
    gate            the quality gate: publish, or hold back
    export          the versioned SavedModel, verified, published atomically
    preprocess      PNG/JPEG bytes -> MNIST's 28x28 (the predict_image signature)
    warmup          TF Serving's warmup records
    report/         the evaluation report: evaluate, metrics, pictures

Arrows point one way: cli -> train -> the rest; nothing imports cli or train.
"""

__version__ = "0.1.0"
