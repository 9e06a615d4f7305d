"""The `datacraft` command line (`datacraft.cli.main:app`)."""
