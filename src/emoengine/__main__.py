from emoengine.cli.main import main

main()
