"""Where images come from and how batches reach the device."""


class InputFailure(Exception):
    """The input pipeline broke in a way that skipping one file cannot mend (a CUDA error, a dead
    pipeline for another reason than a file): the trainer checkpoints and exits with code 1.

    Its message is the first line of what it was given: the error lines print it in, and torch's CUDA
    errors go on for lines of generic advice (asynchronous reporting, CUDA_LAUNCH_BLOCKING)."""

    def __init__(self, message: str):
        lines = str(message).strip().splitlines()
        super().__init__(lines[0] if lines else "the input pipeline failed")
