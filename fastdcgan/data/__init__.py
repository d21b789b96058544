"""Where images come from and how batches reach the device."""


class InputFailure(Exception):
    """The input pipeline broke in a way that skipping one file cannot mend (a CUDA error, a dead
    pipeline for another reason than a file): the trainer checkpoints and exits with code 1."""
