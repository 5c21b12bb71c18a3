from plankton_cli.cli import main

main()
