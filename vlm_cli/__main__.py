"""``python -m vlm_cli`` runs the ``vlm`` command line."""

from vlm_cli.cli import main

main()
