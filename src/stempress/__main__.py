"""``python -m stempress`` runs the CLI."""

from stempress.cli import main

main()
