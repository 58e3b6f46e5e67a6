"""digit-serve trainer: TFDS MNIST -> tf.data -> CNN under tf.distribute -> SavedModel."""

__version__ = "0.1.0"
