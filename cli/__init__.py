"""`emoengine.cli`: the `emoengine` command. One module per command (typer); each parses its options, calls one
function of the package and leaves errors to cli.main, which turns them into one line and an exit code.
"""
