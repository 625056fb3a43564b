"""``python -m trackflow`` runs the CLI."""

from trackflow.cli import main

main()
