"""vlm: train and run audio-visual language models (Video-LLaMA, Video-LLaVA) on local GPUs.

Importing this package has no side effects and imports neither torch nor transformers: the
command line (`vlm --help`) must stay instant. Subpackages:

- ``vlm_cli.media``: video/image/audio decoding, frame sampling, fbank features.
- ``vlm_cli.cache``: the content-addressed feature cache.
- ``vlm_cli.model``: frozen encoders (and, later, connectors and the LLM).
- ``vlm_cli.toyav``: the built-in synthetic audio-visual dataset.
- ``vlm_cli.commands``: one module per subcommand (installed from ``commands/``).
"""

__version__ = "0.1.0"
