"""`python -m retrain`: the same command-line tool as `retrain`."""

from retrain.cli import main

main()
