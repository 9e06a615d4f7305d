"""`python -m datacraft.cli …` is the `datacraft` command."""

from datacraft.cli.main import main

main()
