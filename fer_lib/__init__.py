"""fer_lib: the library behind the FER2013 report: data, model, training, the questions the pages answer, their
figures, the photo classifier, and the report's context and builder."""

CLASS_NAMES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 48  # FER2013 faces are 48x48 grayscale


class ConfigError(ValueError):
    """A setting that cannot work (unknown profile, missing weights file, mismatched checkpoint); the CLI
    reports it as a one-line error, unlike a bug's traceback."""
