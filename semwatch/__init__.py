"""semwatch: automatic colorization of SEM images, as a watch-folder service."""

__version__ = "0.1.0"
