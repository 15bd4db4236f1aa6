from eqsurgeon.cli import main

main()
