"""`python -m kdtui.cli`: the `kdtui` command."""

from kdtui.cli import main

main()
